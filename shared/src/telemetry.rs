//! Logging set-up, shared by every binary so their logs look alike: plain or JSON lines on
//! stderr (stdout is reserved for command output such as `watcher plan` and `backup copy`).

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{LogArgs, LogFormat};

/// Installs the global subscriber. Call once, at start-up; a second call is ignored.
pub fn init_logging(args: &LogArgs) {
    let mut filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    // The TLS verifier logs each certificate it refuses at ERROR, from inside the TLS stack; the
    // registry client reports the same failure once, naming the registry and the fix
    // (`CopyError::UntrustedCertificate`). Unless asked for by name, it stays quiet.
    if !args.log_level.contains("rustls_platform_verifier")
        && let Ok(quiet) = "rustls_platform_verifier=off".parse()
    {
        filter = filter.add_directive(quiet);
    }
    let registry = tracing_subscriber::registry().with(filter);
    use std::io::IsTerminal as _;
    let format = args
        .log_format
        .unwrap_or(if std::io::stderr().is_terminal() {
            LogFormat::Text
        } else {
            LogFormat::Json
        });
    let result = match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    drop(result);
}
