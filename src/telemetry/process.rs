//! What the process is and uses: `dds_gateway_build_info` (version, and the git revision when
//! the build knew it) and, on Linux, the CPU time, resident memory and open file descriptors the
//! kernel reports in `/proc/self` (the standard `process_*` metrics). Read when metrics are
//! collected, so they cost nothing between scrapes; elsewhere they are absent.

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

/// The git revision the binary was built from, when the build could tell (set by `build.rs`).
const GIT_REVISION: Option<&str> = option_env!("DDS_GATEWAY_GIT_REVISION");

/// Registers the build information and the process metrics on `meter`.
pub(crate) fn register(meter: &Meter) {
    let mut build = vec![KeyValue::new("version", env!("CARGO_PKG_VERSION"))];
    if let Some(revision) = GIT_REVISION.filter(|r| !r.is_empty()) {
        build.push(KeyValue::new("revision", revision));
    }
    meter
        .u64_observable_gauge("dds_gateway.build_info")
        .with_description("Always 1; the labels say which build of the gateway is running")
        .with_callback(move |gauge| gauge.observe(1, &build))
        .build();
    #[cfg(target_os = "linux")]
    linux::register(meter);
}

#[cfg(target_os = "linux")]
mod linux {
    use opentelemetry::metrics::Meter;

    /// Registers the process metrics read from `/proc/self`.
    pub(super) fn register(meter: &Meter) {
        meter
            .f64_observable_counter("process.cpu")
            .with_unit("s")
            .with_description("CPU time the process has used, user and system")
            .with_callback(|counter| {
                if let Some(stat) = Stat::read() {
                    counter.observe(stat.cpu_seconds, &[]);
                }
            })
            .build();
        meter
            .u64_observable_gauge("process.resident_memory")
            .with_unit("By")
            .with_description("Resident memory of the process")
            .with_callback(|gauge| {
                if let Some(stat) = Stat::read() {
                    gauge.observe(stat.resident_bytes, &[]);
                }
            })
            .build();
        meter
            .u64_observable_gauge("process.open_fds")
            .with_description("File descriptors the process has open")
            .with_callback(|gauge| {
                if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
                    gauge.observe(entries.count() as u64, &[]);
                }
            })
            .build();
    }

    /// What `/proc/self/stat` says about the process.
    #[derive(Debug, PartialEq)]
    pub(super) struct Stat {
        pub(super) cpu_seconds: f64,
        pub(super) resident_bytes: u64,
    }

    impl Stat {
        fn read() -> Option<Self> {
            let text = std::fs::read_to_string("/proc/self/stat").ok()?;
            Self::parse(
                &text,
                rustix::param::clock_ticks_per_second(),
                rustix::param::page_size() as u64,
            )
        }

        /// Parses `/proc/<pid>/stat` (proc(5)): `utime` and `stime` (fields 14 and 15, in clock
        /// ticks) and `rss` (field 24, in pages). The command name (field 2) may hold spaces
        /// and parentheses, so the fields are counted from its closing parenthesis.
        pub(super) fn parse(text: &str, ticks_per_second: u64, page_size: u64) -> Option<Self> {
            let (_, after_name) = text.rsplit_once(')')?;
            // Field 3 (the state) is the first after the name.
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
            let ticks = field(14)? + field(15)?;
            Some(Self {
                cpu_seconds: ticks as f64 / ticks_per_second.max(1) as f64,
                resident_bytes: field(24)?.saturating_mul(page_size),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn build_info_names_the_version_and_the_revision_the_build_knew() {
        use opentelemetry::metrics::MeterProvider as _;
        let reader = crate::telemetry::prometheus::PrometheusReader::new();
        let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
            .with_reader(reader.clone())
            .build();
        super::register(&provider.meter("test"));
        let text = reader.render();
        let line = text
            .lines()
            .find(|l| l.starts_with("dds_gateway_build_info{"))
            .unwrap_or_else(|| panic!("no build info in {text}"));
        assert!(line.ends_with("} 1"), "{line}");
        assert!(
            line.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
            "{line}"
        );
        match super::GIT_REVISION {
            Some(revision) => assert!(line.contains(&format!("revision=\"{revision}\"")), "{line}"),
            None => assert!(!line.contains("revision="), "{line}"),
        }
    }
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod proc_tests {
    use super::linux::Stat;

    #[test]
    fn reads_cpu_time_and_resident_memory_from_proc_stat() {
        // A process named "a) b" (as proc(5) prints it): 250 + 50 ticks of CPU, 426 pages.
        let line = "1774 (a) b) R 1770 1770 23360 0 -1 4194304 103 0 0 0 250 50 0 0 20 0 1 0 \
                    77074 3133440 426 18446744073709551615 94852951781376 0";
        assert_eq!(
            Stat::parse(line, 100, 4096),
            Some(Stat {
                cpu_seconds: 3.0,
                resident_bytes: 426 * 4096,
            })
        );
        assert_eq!(Stat::parse("1774 (cat) R 1770", 100, 4096), None);
    }
}
