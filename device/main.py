# Ferry firmware entry point: the ESP32 runs boot.py, then this file, at every start
# (power-on, reset, watchdog, deep-sleep wake). Everything happens in app.py.
import app

app.main()
