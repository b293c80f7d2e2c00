"""Ready-made pieces built on the library: handlers (`apps`) and the demo."""
