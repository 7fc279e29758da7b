//! What the origin's and the edge's `/metrics` share: the text encoding of a
//! prometheus-client [`Registry`], the content type it is served with, and the helpers
//! a [`Collector`](prometheus_client::collector::Collector) uses to export values kept
//! elsewhere (atomics, counts taken at scrape time) without copying them into
//! prometheus-client's own metric types; and the one process figure both export the
//! same way, the tokio runtime's alive tasks.
//!
//! Never knows which process it serves or what its metrics mean.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The Prometheus text format: what scrapers, tests and scripts have always parsed
/// here. prometheus-client writes OpenMetrics text, which that parser reads too (its
/// `# EOF` is a comment there).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The page for `/metrics`: `registry`, then what `hand_rendered` appends, then the
/// OpenMetrics `# EOF` marker, which must stay last.
///
/// `hand_rendered` is for [`crate::media::hop::HopLatency`] histograms: their bucket
/// bounds are spelled `le="0.00005"`, `le="1"` in every scrape so far, where
/// prometheus-client's histogram would write `5e-5` and `1.0`.
pub fn encode(registry: &Registry, hand_rendered: impl FnOnce(&mut String)) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, registry);
    hand_rendered(&mut out);
    let _ = prometheus_client::encoding::text::encode_eof(&mut out);
    out
}

/// One gauge without labels.
pub fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    const_gauge(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// One counter without labels. `name` is the sample's name, `_total` included, so that
/// it can be found in the source as scrapers see it; prometheus-client appends the
/// suffix itself, and names the family without it.
pub fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    ConstCounter::new(value).encode(encoder.encode_descriptor(family(name), help, None, MetricType::Counter)?)
}

/// A gauge with one sample per label set (none at all is a family with no samples).
pub fn gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(L, u64)],
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        const_gauge(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// A counter with one sample per label set; `name` as for [`counter`].
pub fn counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(L, u64)],
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(family(name), help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// Tasks alive in the tokio runtime the caller runs on (spawned and not yet finished),
/// `None` outside a runtime. A soak reads it to tell a leak of tasks from a busy moment
/// (`scripts/soak.sh`).
pub fn tokio_alive_tasks() -> Option<u64> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    Some(handle.metrics().num_alive_tasks() as u64)
}

/// prometheus-client writes gauges as `i64` and refuses `u64::MAX`, which would end
/// the page there; a count past `i64::MAX` is shown as that.
fn const_gauge(value: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
}

/// A counter's family name: its sample name without `_total`.
fn family(name: &str) -> &str {
    debug_assert!(name.ends_with("_total"), "counter {name} must be named as sampled, with _total");
    name.strip_suffix("_total").unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use prometheus_client::collector::Collector;

    use super::*;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Side {
        side: &'static str,
    }

    #[derive(Debug)]
    struct Fixed;

    impl Collector for Fixed {
        fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
            gauge(&mut encoder, "x_open", "Open now", 3)?;
            counter(&mut encoder, "x_opened_total", "Opened so far", 7)?;
            gauges::<Side>(&mut encoder, "x_none", "Nothing yet", &[])?;
            counters(&mut encoder, "x_drops_total", "Drops", &[(Side { side: "a" }, 1), (Side { side: "b" }, 0)])
        }
    }

    #[tokio::test]
    async fn alive_tasks_count_spawned_tasks_until_they_finish() {
        let before = tokio_alive_tasks().expect("inside a runtime");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = rx.await;
        });
        assert_eq!(tokio_alive_tasks(), Some(before + 1));
        drop(tx);
        task.await.unwrap();
        assert_eq!(tokio_alive_tasks(), Some(before));
    }

    #[test]
    fn alive_tasks_outside_a_runtime_are_unknown() {
        assert_eq!(tokio_alive_tasks(), None);
    }

    #[test]
    fn collected_values_keep_their_names_and_help_and_hand_rendered_text_precedes_eof() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed));
        let text = encode(&registry, |out| out.push_str("x_hop_seconds_count 0\n"));
        assert_eq!(
            text,
            "# HELP x_open Open now\n# TYPE x_open gauge\nx_open 3\n\
             # HELP x_opened Opened so far\n# TYPE x_opened counter\nx_opened_total 7\n\
             # HELP x_none Nothing yet\n# TYPE x_none gauge\n\
             # HELP x_drops Drops\n# TYPE x_drops counter\n\
             x_drops_total{side=\"a\"} 1\nx_drops_total{side=\"b\"} 0\n\
             x_hop_seconds_count 0\n# EOF\n"
        );
    }
}
