//! Structured logs via tracing. `WHALE_LOG` sets the filter (default `info`), `WHALE_LOG_FORMAT=json`
//! switches to JSON lines for log shippers. Logs go to stderr so stdout stays for data (`--json`).
//! Every line passes through [`scrub`]: a URL with credentials (a library's connection message,
//! an error) is never logged with them, nor is any secret the configuration holds (a library
//! may print a parsed URL's password in its own debug format).

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

/// Secret values seen in the configuration, replaced by `***` in every log line and error.
static SECRETS: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Adds a value that must never be printed (values shorter than 4 characters are ignored: they
/// would mangle ordinary text and say little).
pub fn hide(secret: &str) {
    if secret.len() < 4 {
        return;
    }
    if let Ok(mut list) = SECRETS.write() {
        if !list.iter().any(|s| s == secret) {
            list.push(secret.to_owned());
        }
    }
}

/// `text` with URL credentials ([`crate::config::redact_url`]) and every hidden secret
/// replaced by `***`.
pub fn scrub(text: &str) -> String {
    let mut out = if text.contains("://") {
        crate::config::redact_url(text)
    } else {
        text.to_owned()
    };
    if let Ok(list) = SECRETS.read() {
        for s in list.iter() {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
    }
    out
}

/// stderr, scrubbed ([`scrub`]; each log line is written in one call).
struct Redacting;

impl std::io::Write for Redacting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        match std::str::from_utf8(buf) {
            Ok(text) => err.write_all(scrub(text).as_bytes())?,
            Err(_) => err.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
