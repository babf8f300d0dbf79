"""Ferry's stream analytics: a Faust app that dedupes, windows and watches the bridged readings."""
