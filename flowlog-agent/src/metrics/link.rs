//! Link counters: driver statistics of the captured interfaces (the names
//! `ethtool -S` prints, `ethtool-stats`) as Prometheus counters, one metric
//! per statistic, `flowlog_ethtool_<name>_total{interface}`, the names node
//! exporter, Telegraf and the CloudWatch agent use after their own prefix.
//! By default the ENA allowance counters: packets the hypervisor queued or
//! dropped, which no eBPF hook sees.
//!
//! Read when `/metrics` is scraped (off the runtime's threads: the ioctl
//! takes the kernel's RTNL lock), never by the main loop. An interface whose
//! driver has none of the names has no series; that is said once, at debug
//! level. Values are the driver's own: they restart from 0 when the driver
//! is reloaded, which Prometheus takes as a counter reset.

use std::{
    collections::HashSet,
    sync::Mutex,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, MetricType},
};
use tracing::debug;

use super::Iface;
use crate::bpf::ethtool::{Ethtool, ETH_GSTRING_LEN};

/// The ENA driver's allowance counters, the default of `ethtool-stats`, and
/// what each counts (from AWS's ENA documentation).
pub const ENA_ALLOWANCES: [(&str, &str); 5] = [
    (
        "bw_in_allowance_exceeded",
        "Packets queued or dropped because the inbound aggregate bandwidth exceeded the instance's maximum",
    ),
    (
        "bw_out_allowance_exceeded",
        "Packets queued or dropped because the outbound aggregate bandwidth exceeded the instance's maximum",
    ),
    (
        "pps_allowance_exceeded",
        "Packets queued or dropped because the bidirectional packets per second exceeded the instance's maximum",
    ),
    ("conntrack_allowance_exceeded", "Packets dropped because connection tracking exceeded the instance's maximum"),
    (
        "linklocal_allowance_exceeded",
        "Packets dropped because traffic to local proxy services (Amazon DNS, IMDS, Time Sync) exceeded the \
         interface's packets per second maximum",
    ),
];

/// The default list: the ENA allowance counters.
pub fn default_names() -> Vec<String> {
    ENA_ALLOWANCES.iter().map(|(n, _)| n.to_string()).collect()
}

/// The metric of statistic `stat`, without the registry's `flowlog_` prefix
/// and the `_total` every counter gets: characters a metric name cannot have
/// become `_`.
pub fn metric_name(stat: &str) -> String {
    let clean: String = stat.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    format!("ethtool_{clean}")
}

/// Checks the configured names: `["none"]` is no link counters; each name at
/// most 31 bytes (the kernel's name size) without control characters, and no
/// two the same metric.
pub fn check_names(names: &[String]) -> Result<Vec<String>, String> {
    if names.len() == 1 && names[0].eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let mut metrics = HashSet::new();
    for n in names {
        if n.eq_ignore_ascii_case("none") {
            return Err("`none` alone, or names of `ethtool -S` statistics".into());
        }
        if n.is_empty() || n.len() >= ETH_GSTRING_LEN || n.chars().any(|c| c.is_control() || c.is_whitespace()) {
            let most = ETH_GSTRING_LEN - 1;
            return Err(format!("{n:?}: an `ethtool -S` statistic name is 1 to {most} bytes without spaces"));
        }
        if !metrics.insert(metric_name(n)) {
            return Err(format!("{n:?}: another name gives the same metric, flowlog_{}_total", metric_name(n)));
        }
    }
    Ok(names.to_vec())
}

/// One statistic of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    pub stat: String,
    pub interface: String,
    pub value: u64,
}

#[derive(Debug, Default)]
struct State {
    names: Vec<String>,
    interfaces: Vec<String>,
    /// Interfaces whose missing statistics were logged already.
    said: HashSet<String>,
}

/// The collector `/metrics` encodes; the agent sets what it reads.
#[derive(Debug, Default)]
pub struct LinkCounters {
    state: Mutex<State>,
}

impl LinkCounters {
    /// The statistics to export (empty: none).
    pub fn set_names(&self, names: &[String]) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.names = names.to_vec();
        s.said.clear();
    }

    /// The captured interfaces.
    pub fn set_interfaces(&self, interfaces: Vec<String>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let State { said, .. } = &mut *s;
        said.retain(|i| interfaces.contains(i));
        s.interfaces = interfaces;
    }

    /// The configured statistics of every captured interface whose driver
    /// has them, in the configured order, then by interface.
    pub fn read(&self) -> Vec<Reading> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.names.is_empty() || s.interfaces.is_empty() {
            return Vec::new();
        }
        let ethtool = match Ethtool::new() {
            Ok(e) => e,
            Err(e) => {
                debug!("link counters: no socket for the ethtool ioctl: {e}");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        let State { names, interfaces, said } = &mut *s;
        for iface in interfaces.iter() {
            match read_one(&ethtool, iface, names) {
                Ok(r) if r.is_empty() => {
                    if said.insert(iface.clone()) {
                        let stats = names.join(",");
                        debug!(iface = %iface, %stats, "link counters: the driver has none of these statistics");
                    }
                }
                Ok(r) => out.extend(r),
                Err(e) => {
                    if said.insert(iface.clone()) {
                        debug!(iface = %iface, "link counters: cannot read the driver's statistics: {e}");
                    }
                }
            }
        }
        let order = |r: &Reading| names.iter().position(|n| *n == r.stat);
        out.sort_by(|a, b| order(a).cmp(&order(b)).then_with(|| a.interface.cmp(&b.interface)));
        out
    }
}

fn read_one(ethtool: &Ethtool, iface: &str, wanted: &[String]) -> std::io::Result<Vec<Reading>> {
    let names = ethtool.stat_names(iface)?;
    let picked: Vec<(usize, &String)> =
        wanted.iter().filter_map(|w| names.iter().position(|n| n == w).map(|i| (i, w))).collect();
    if picked.is_empty() {
        return Ok(Vec::new());
    }
    let values = ethtool.stat_values(iface, names.len())?;
    let reading =
        |(i, w): (usize, &String)| Reading { stat: w.clone(), interface: iface.to_string(), value: values[i] };
    Ok(picked.into_iter().map(reading).collect())
}

/// `readings` as counters: one metric per statistic, in their order.
pub fn encode(readings: &[Reading], mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let mut i = 0;
    while i < readings.len() {
        let stat = &readings[i].stat;
        let n = readings[i..].iter().take_while(|r| r.stat == *stat).count();
        let help = match ENA_ALLOWANCES.iter().find(|(name, _)| name == stat) {
            Some((_, h)) => format!("{h} (ethtool -S {stat}; ENA)."),
            None => format!("Driver statistic {stat} of the interface (ethtool -S)."),
        };
        let name = metric_name(stat);
        let mut metric = encoder.encode_descriptor(&name, &help, None, MetricType::Counter)?;
        for r in &readings[i..i + n] {
            ConstCounter::new(r.value).encode(metric.encode_family(&Iface { interface: r.interface.clone() })?)?;
        }
        i += n;
    }
    Ok(())
}

impl Collector for LinkCounters {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode(&self.read(), encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::{encoding::text, registry::Registry};

    #[derive(Debug)]
    struct Fixed(Vec<Reading>);

    impl Collector for Fixed {
        fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode(&self.0, encoder)
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn the_default_is_the_five_ena_allowance_counters() {
        let ena = [
            "bw_in_allowance_exceeded",
            "bw_out_allowance_exceeded",
            "pps_allowance_exceeded",
            "conntrack_allowance_exceeded",
            "linklocal_allowance_exceeded",
        ];
        assert_eq!(default_names(), s(&ena));
        assert_eq!(check_names(&default_names()).unwrap(), default_names());
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(check_names(&s(&["none"])).unwrap(), Vec::<String>::new());
        let other = s(&["port.rx_bytes", "rx_queue_0_drops"]);
        assert_eq!(check_names(&other).unwrap(), other);
        let size = ": an `ethtool -S` statistic name is 1 to 31 bytes without spaces";
        let same = "another name gives the same metric, flowlog_ethtool_port_rx_total";
        for (names, want) in [
            (&["none", "x"][..], "`none` alone, or names of `ethtool -S` statistics".to_string()),
            (&[""], format!("\"\"{size}")),
            (&["a b"], format!("\"a b\"{size}")),
            (&["rx_queue_0_xdp_packets_and_a_lot"], format!("\"rx_queue_0_xdp_packets_and_a_lot\"{size}")),
            (&["port.rx", "port_rx"], format!("\"port_rx\": {same}")),
        ] {
            assert_eq!(check_names(&s(names)).unwrap_err(), want, "{names:?}");
        }
    }

    /// One counter per statistic, a series per interface; the ENA ones with
    /// their meaning.
    #[test]
    fn readings_become_counters() {
        let r = |stat: &str, interface: &str, value| Reading { stat: stat.into(), interface: interface.into(), value };
        let mut reg = Registry::with_prefix("flowlog");
        reg.register_collector(Box::new(Fixed(vec![
            r("pps_allowance_exceeded", "eth0", 7),
            r("pps_allowance_exceeded", "eth1", 0),
            r("port.rx_bytes", "eth1", 1 << 40),
        ])));
        let mut text = String::new();
        text::encode(&mut text, &reg).unwrap();
        assert_eq!(
            text,
            "# HELP flowlog_ethtool_pps_allowance_exceeded Packets queued or dropped because the bidirectional \
             packets per second \
             exceeded the instance's maximum (ethtool -S pps_allowance_exceeded; ENA).\n\
             # TYPE flowlog_ethtool_pps_allowance_exceeded counter\n\
             flowlog_ethtool_pps_allowance_exceeded_total{interface=\"eth0\"} 7\n\
             flowlog_ethtool_pps_allowance_exceeded_total{interface=\"eth1\"} 0\n\
             # HELP flowlog_ethtool_port_rx_bytes Driver statistic port.rx_bytes of the interface (ethtool -S).\n\
             # TYPE flowlog_ethtool_port_rx_bytes counter\n\
             flowlog_ethtool_port_rx_bytes_total{interface=\"eth1\"} 1099511627776\n\
             # EOF\n"
        );
    }

    /// Loopback has no driver statistics: no series, no error.
    #[test]
    fn an_interface_without_statistics_is_absent() {
        let l = LinkCounters::default();
        l.set_names(&default_names());
        l.set_interfaces(vec!["lo".into(), "flnosuch0".into()]);
        assert_eq!(l.read(), []);
        assert_eq!(l.state.lock().unwrap().said, HashSet::from(["lo".to_string(), "flnosuch0".to_string()]));
        l.set_interfaces(vec!["lo".into()]);
        assert_eq!(l.state.lock().unwrap().said, HashSet::from(["lo".to_string()]));
    }
}
