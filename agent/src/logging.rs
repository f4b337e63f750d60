//! Where log lines go: the journal when the process runs under systemd with its output connected
//! to the journal, a readable stderr logger otherwise. Either way every line passes through
//! [`crate::redact::redact`] first.
//!
//! Structured fields use `log`'s key-value syntax (`info!(runner = name; "registered")`); they
//! become journal fields (`RUNNER=`) under systemd and `runner=…` suffixes on stderr.

use std::io::Write;

use log::{kv, Level, LevelFilter, Log, Metadata, Record};

use crate::redact::redact;

/// Set up the global logger once, at start. `verbosity` counts `-v` flags (0 = info).
pub fn init(verbosity: u8, quiet: bool) {
    let level = match (quiet, verbosity) {
        (true, _) => LevelFilter::Warn,
        (false, 0) => LevelFilter::Info,
        (false, 1) => LevelFilter::Debug,
        (false, _) => LevelFilter::Trace,
    };
    let logger: Box<dyn Log> = match journal() {
        Some(journal) => Box::new(Redacting(journal)),
        None => Box::new(Redacting(Stderr)),
    };
    // A second init (tests calling into the CLI twice) keeps the first logger; that is fine.
    if log::set_boxed_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

fn journal() -> Option<systemd_journal_logger::JournalLog> {
    if !systemd_journal_logger::connected_to_journal() {
        return None;
    }
    systemd_journal_logger::JournalLog::new()
        .ok()
        .map(|log| log.with_syslog_identifier("agentctl".to_owned()))
}

/// Wraps a logger so that message text and field values are redacted before they reach it.
struct Redacting<L>(L);

impl<L: Log> Log for Redacting<L> {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        let message = redact(&message);
        let fields = RedactedFields::collect(record.key_values());
        self.0.log(
            &Record::builder()
                .args(format_args!("{message}"))
                .level(record.level())
                .target(record.target())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .key_values(&fields)
                .build(),
        );
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// Field values of a record, redacted, in their original order.
struct RedactedFields(Vec<(String, String)>);

impl RedactedFields {
    fn collect(source: &dyn kv::Source) -> Self {
        struct Visitor(Vec<(String, String)>);
        impl<'kvs> kv::VisitSource<'kvs> for Visitor {
            fn visit_pair(
                &mut self,
                key: kv::Key<'kvs>,
                value: kv::Value<'kvs>,
            ) -> Result<(), kv::Error> {
                self.0
                    .push((key.to_string(), redact(&value.to_string()).into_owned()));
                Ok(())
            }
        }
        let mut visitor = Visitor(Vec::new());
        // Visiting an in-memory record cannot fail; a partial list is still better than none.
        let _ = source.visit(&mut visitor);
        RedactedFields(visitor.0)
    }
}

impl kv::Source for RedactedFields {
    fn visit<'kvs>(&'kvs self, visitor: &mut dyn kv::VisitSource<'kvs>) -> Result<(), kv::Error> {
        for (key, value) in &self.0 {
            visitor.visit_pair(kv::Key::from_str(key), kv::Value::from(value.as_str()))?;
        }
        Ok(())
    }
}

/// `level: message key=value …` on stderr; `agentctl` keeps stdout for data.
struct Stderr;

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        let mut line = format!("{}: {}", label(record.level()), record.args());
        let fields = RedactedFields::collect(record.key_values());
        for (key, value) in &fields.0 {
            line.push_str(&format!(" {key}={value}"));
        }
        line.push('\n');
        // Nothing sensible can be done when stderr is gone.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

fn label(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warning",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<String>>>);

    impl Log for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &Record<'_>) {
            let fields = RedactedFields::collect(record.key_values());
            let mut line = record.args().to_string();
            for (key, value) in fields.0 {
                line.push_str(&format!(" {key}={value}"));
            }
            self.0.lock().unwrap().push(line);
        }
        fn flush(&self) {}
    }

    #[test]
    fn a_token_never_reaches_the_inner_logger() {
        let capture = Capture::default();
        let logger = Redacting(capture.clone());
        let token = "AABF3JGZDX3P5PMEXLND6TS6FCWO6";
        let pat = "ghp_R5mK2xN8vQ4wE7yT1uI9oP3aS6dF0gH2jK4l";
        logger.log(
            &Record::builder()
                .args(format_args!("configuring with token {token}"))
                .level(Level::Info)
                .key_values(&[("pat", pat)])
                .build(),
        );
        let lines = capture.0.lock().unwrap();
        assert_eq!(lines.as_slice(), ["configuring with token *** pat=***"]);
    }
}
