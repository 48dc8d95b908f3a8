"""Version 1 of the cdca wire protocol: cdca.proto and its generated stubs (do not edit those)."""
