"""hw-sim: virtual ESP32 boards, virtual serial ports and fault-injecting links for testing Ferry."""
