"""The cloud side of cdca: data, students, teacher and adaptation in torch; never imports device."""
