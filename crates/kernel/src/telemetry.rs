//! Structured logs via tracing. `WHALE_LOG` sets the filter (default `info`), `WHALE_LOG_FORMAT=json`
//! switches to JSON lines for log shippers. Logs go to stderr so stdout stays for data (`--json`).
//! Every line passes through [`scrub`]: a URL with credentials (a library's connection message,
//! an error) is never logged with them, nor is any secret the configuration holds (a library
//! may print a parsed URL's password in its own debug format).
//!
//! Traces: spans (`kernel::tracectx`) are exported over OTLP/HTTP (protobuf) when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (with
//! `OTEL_EXPORTER_OTLP_HEADERS`, `_TIMEOUT`, `OTEL_SERVICE_NAME` (default `whale`),
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`); off by default, and off with
//! `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true`.

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

/// The OTLP tracer provider while traces are exported (flushed by [`shutdown`]).
static PROVIDER: OnceLock<opentelemetry_sdk::trace::SdkTracerProvider> = OnceLock::new();

/// Whether the `OTEL_*` variables ask for trace export.
fn otlp_wanted() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let off = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim() == "none")
        || std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"));
    !off && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Starts OTLP trace export when configured; says why not when it cannot.
fn init_traces() {
    if !otlp_wanted() {
        return;
    }
    for k in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ] {
        if let Ok(p) = std::env::var(k) {
            if !p.is_empty() && p != "http/protobuf" {
                tracing::warn!("{k}={p} is not supported: whale exports traces over OTLP http/protobuf (port 4318 by default)");
            }
        }
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(
                "OTLP trace export is configured but cannot start, no traces are exported: {e}"
            );
            return;
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("whale");
    }
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    let _ = PROVIDER.set(provider);
    crate::tracectx::set_exporting(true);
    tracing::info!("exporting traces over OTLP");
}

/// Flushes and stops trace export (call once, outside the async runtime, before exiting).
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        if let Err(e) = p.shutdown() {
            tracing::warn!("flushing traces at exit failed: {e}");
        }
    }
}

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
    init_traces();
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
