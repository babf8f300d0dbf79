# Ferry firmware: the duty-cycle mode's wake (settings.mode "duty_cycle"; docs/device.md, "The loop").
# MicroPython. Every wake is a boot: sample once, flush, connect (retries with back-off while the
# budget lasts), send the backlog and take the commands the broker queued, all within
# wake_budget_ms; then the retained "offline" status (the will's bytes) and DISCONNECT, or, out
# of time, a close without DISCONNECT so the broker publishes the will; close the outbox and
# deep-sleep until the next sample is due. A module of its own so that an always-on board does not
# carry this code on its heap (app.main imports it only in duty-cycle mode).
import time

from hw import log


def wake(app):
    """One duty-cycle wake of `app` (an app.App): sample, send the backlog within the budget, deep-sleep."""
    cfg = app.cfg
    hw = app.hw
    t0 = time.ticks_ms()
    hw.watchdog(cfg.wdt_timeout_ms)
    app.sample()
    app.ob.flush()  # on flash now, so it can be sent during this wake
    s = app.session
    while not s.up and _left(app, t0) > 0:
        if app.connect(_left(app, t0)):
            break
        d = app.retry_later()
        if d >= _left(app, t0):
            break
        while d > 0:  # in steps the watchdog outlives: a back-off may be longer than its timeout
            step = d if d < app.max_sleep_ms else app.max_sleep_ms
            time.sleep_ms(step)
            hw.feed()
            d -= step
    if s.up:
        _send_backlog(app, t0)
    if app.trial is not None:
        import ota_trial

        ota_trial.tick(app, 1)  # a wake delivers one reading: it cannot wait for three
    left = _left(app, t0)
    log("wake: %d pending, %d sent, %d acked, %d ms of the budget left" % (
        app.ob.pending(), s.sent, s.acked, left))
    app.ob.close()
    awake = time.ticks_diff(time.ticks_ms(), t0)
    hw.deepsleep(max(100, cfg.sample_ms - awake))


def _left(app, t0):
    return app.cfg.wake_budget_ms - time.ticks_diff(time.ticks_ms(), t0)


def _send_backlog(app, t0):
    """Publish until the outbox is empty and every PUBACK (birth, replies) is in; then "offline"."""
    s = app.session
    while s.up and not s.idle() and _left(app, t0) > 0:
        app.hw.feed()
        s.service(time.ticks_ms())
        if s.up and not s.can_send():
            s.wait(min(_left(app, t0), s.deadline_ms(time.ticks_ms())))
    if s.up and s.idle():
        # Asleep counts as offline: say so (the will's bytes) before a clean DISCONNECT.
        s.publish_status(app.will)
        while s.up and s.in_flight() and _left(app, t0) > 0:
            app.hw.feed()
            s.service(time.ticks_ms())
            if s.up:
                s.wait(min(_left(app, t0), s.deadline_ms(time.ticks_ms())))
    if s.up and not s.in_flight():
        s.close()  # DISCONNECT: the broker drops the will
    else:
        s.abort()  # out of time: no DISCONNECT, so the broker publishes the will ("offline")
