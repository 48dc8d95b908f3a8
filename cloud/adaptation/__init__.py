"""U-VPA's cloud core: uncertainty, visual prompt learning with uncertainty-guided updates."""
