"""U-VPA's cloud core: visual prompt learning with uncertainty-guided updates, per device and fleet."""
