# Ferry firmware entry point: the ESP32 runs boot.py, then this file, at every start
# (power-on, reset, watchdog, deep-sleep wake). Everything happens in app.py; this file
# makes sure no failure leaves the board dead:
# - the watchdog starts before the firmware is imported, so a hang anywhere ends in a reset;
# - any exception, MemoryError while importing app included, goes to crashlog.py: logged to
#   the crash file, counted, then a back-off and a reset;
# - Ctrl-C (an operator, `ferry flash`) and a bad configuration leave for the REPL with the
#   watchdog stretched to 10 minutes, not stopped (an ESP32 cannot stop it).
# Before app: boot_select (a boot file, like this one: no update replaces them) chooses which
# app folder runs, and rolls back an update that crashed or never confirmed; while an update
# downloads it runs ota_mode instead of app (docs/ota.md).
import machine


def watchdog_ms():
    """The configuration's wdt_timeout_ms, read on its own: settings may be what fails to import."""
    try:
        import json

        with open("/ferry_config.json") as f:
            ms = json.load(f)["wdt_timeout_ms"]
        if 1000 <= ms <= 600000:
            return ms
    except Exception:  # settings will say what is wrong
        pass
    return 30000


watchdog = machine.WDT(timeout=watchdog_ms())
try:
    try:
        __import__("os").stat("/ota")
    except OSError:  # never updated: nothing for boot_select to choose
        import app
    else:  # which app folder runs, app or ota_mode (docs/ota.md); boot_select drops itself after
        app = __import__(__import__("boot_select").start())
    app.main()  # returns only when the configuration is bad: the REPL is where to fix it
except KeyboardInterrupt:
    machine.WDT(timeout=600000)
    raise
except Exception as e:
    import crashlog

    crashlog.crashed(e, watchdog)
machine.WDT(timeout=600000)
