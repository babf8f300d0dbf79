# Ferry firmware: the app's connect (MicroPython): Wi-Fi, NTP when due, the MQTT session with the
# birth, and NTP syncs. Rare (a connect, a resync every few hours), so App.connect and App.sync_clock
# import this module for the call and drop it after: its bytecode is heap the running firmware gets
# back between connects (docs/device.md, "Heap"), as session_connect.py's is.
import time

from hw import log


def connect(app, wifi_wait_ms):
    """Wi-Fi (waiting at most wifi_wait_ms for it), NTP when due, MQTT; True when the session is up."""
    hw = app.hw
    cfg = app.cfg
    hw.feed()
    if not hw.wifi_connect(cfg.wifi_ssid, cfg.wifi_password, min(wifi_wait_ms, cfg.wifi_timeout_ms), hw.feed):
        return False
    if time.time() >= app.ntp_at_s:
        sync_clock(app)
    hw.feed()
    if not app.session.connect(app.birth(), app.will):
        if cfg.tls and not hw.synced:  # an ESP32's mbedTLS checks the certificate's dates against the RTC
            log("tls: the clock is not set (NTP): the gateway's certificate may look not yet valid")
        return False
    app.reported_lost = app.birth_lost
    app.reported_erroring = app.birth_erroring
    if app.session.connects == 1 and app.boot_failures:
        import crashlog  # rare: only after failed starts

        crashlog.clear()  # this start worked: the next failure backs off from the shortest
    return True


def sync_clock(app):
    hw = app.hw
    was = hw.synced
    if hw.ntp_sync(app.cfg.ntp_host):  # in duty_cycle every wake: the RTC drifts in deep sleep
        app.ntp_at_s = time.time() + app.cfg.ntp_resync_s
        if not was:
            log("clock: set from NTP at seq %d" % app.seq)
        app.ntp_retry_s = app.cfg.ntp_retry_s
    else:  # each try blocks up to ntptime's timeout (and a DNS lookup): backed off
        app.ntp_at_s = time.time() + app.ntp_retry_s
        log("clock: NTP failed, next try in %d s" % app.ntp_retry_s)
        app.ntp_retry_s = min(2 * app.ntp_retry_s, app.cfg.ntp_resync_s)
