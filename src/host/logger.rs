//! `log` facade over `proxy_log`, and a panic hook that reports at critical level.
//!
//! The SDK's logger is not used: it asks the host for its log level with
//! `proxy_get_log_level`, which traps on Kong, and panics on unexpected statuses.

use log::{Level, LevelFilter, Log, Metadata, Record};

use super::abi;

struct ProxyLogger;

static LOGGER: ProxyLogger = ProxyLogger;

const CRITICAL: u32 = 5;

fn abi_level(level: Level) -> u32 {
    match level {
        Level::Trace => 0,
        Level::Debug => 1,
        Level::Info => 2,
        Level::Warn => 3,
        Level::Error => 4,
    }
}

impl Log for ProxyLogger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            abi::log(abi_level(record.level()), &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

pub fn install() {
    // Info and above only: nothing on the request path logs below that, and formatting
    // debug lines the host would discard costs time on every request.
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Info);
    }
    std::panic::set_hook(Box::new(|info| {
        abi::log(CRITICAL, &format!("rampart panicked: {info}"));
    }));
}
