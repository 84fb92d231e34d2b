//! Structured logs via tracing. `WHALE_LOG` sets the filter (default `info`), `WHALE_LOG_FORMAT=json`
//! switches to JSON lines for log shippers. Logs go to stderr so stdout stays for data (`--json`).
//! Every line passes through [`crate::config::redact_url`]: a URL with credentials (a library's
//! connection message, an error) is never logged with them.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("WHALE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
    let json = std::env::var("WHALE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Redacting)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.compact().try_init()
    };
}

/// stderr, with URL credentials redacted (each log line is written in one call).
struct Redacting;

impl std::io::Write for Redacting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        match std::str::from_utf8(buf) {
            Ok(text) if text.contains("://") => {
                err.write_all(crate::config::redact_url(text).as_bytes())?
            }
            _ => err.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
