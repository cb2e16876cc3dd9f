//! `GET /metrics`: the server's counters in the Prometheus (OpenMetrics) text format, through
//! the `prometheus-client` crate.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Label = [(&'static str, &'static str); 1];

pub struct Metrics {
    registry: Registry,
    /// Requests by outcome: a finish reason (`stop`, `length`), `cancelled`, `failed`, or the
    /// HTTP status of a refusal (`400`, `401`, `404`, `413`, `429`, `503`).
    requests: Family<Label, Counter>,
    pub prompt_tokens: Counter,
    pub generation_tokens: Counter,
    /// Sequences holding a KV slot (the batch), and the most there can be.
    pub batch_occupancy: Gauge,
    pub batch_capacity: Gauge,
    /// Requests waiting for a slot.
    pub queue_depth: Gauge,
    /// Sequences the model ran per step (with work).
    pub step_batch_size: Histogram,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub request_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<Label, Counter>::default();
        let prompt_tokens = Counter::default();
        let generation_tokens = Counter::default();
        let batch_occupancy = Gauge::default();
        let batch_capacity = Gauge::default();
        let queue_depth = Gauge::default();
        // 1, 2, 4, ... 1024 sequences.
        let step_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        // 1 ms to about 33 s.
        let time_to_first_token = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        // 0.25 ms to about 8 s.
        let inter_token_latency = Histogram::new(exponential_buckets(0.00025, 2.0, 16));
        let request_duration = Histogram::new(exponential_buckets(0.001, 2.0, 18));
        registry.register(
            "kiln_requests",
            "Requests, by outcome: finish reason (stop, length), cancelled, failed, or the HTTP \
             status of a refusal",
            requests.clone(),
        );
        registry.register(
            "kiln_prompt_tokens",
            "Prompt tokens of admitted requests",
            prompt_tokens.clone(),
        );
        registry.register(
            "kiln_generation_tokens",
            "Tokens generated",
            generation_tokens.clone(),
        );
        registry.register(
            "kiln_batch_occupancy",
            "Sequences holding a KV-cache slot",
            batch_occupancy.clone(),
        );
        registry.register(
            "kiln_batch_capacity",
            "KV-cache slots (--max-batch)",
            batch_capacity.clone(),
        );
        registry.register(
            "kiln_queue_depth",
            "Requests waiting for a slot",
            queue_depth.clone(),
        );
        registry.register(
            "kiln_step_batch_size",
            "Sequences the model ran in one step",
            step_batch_size.clone(),
        );
        registry.register(
            "kiln_time_to_first_token_seconds",
            "From a request's arrival to its first token",
            time_to_first_token.clone(),
        );
        registry.register(
            "kiln_inter_token_latency_seconds",
            "Between consecutive tokens of a sequence",
            inter_token_latency.clone(),
        );
        registry.register(
            "kiln_request_duration_seconds",
            "From a request's arrival to its last token",
            request_duration.clone(),
        );
        Metrics {
            registry,
            requests,
            prompt_tokens,
            generation_tokens,
            batch_occupancy,
            batch_capacity,
            queue_depth,
            step_batch_size,
            time_to_first_token,
            inter_token_latency,
            request_duration,
        }
    }

    /// Counts a request with its outcome (see [`Metrics`]).
    pub fn request(&self, outcome: &'static str) {
        self.requests.get_or_create(&[("outcome", outcome)]).inc();
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        encode(&mut s, &self.registry).expect("writing to a String does not fail");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_every_metric_with_its_value() {
        let m = Metrics::new();
        m.request("stop");
        m.request("stop");
        m.request("429");
        m.generation_tokens.inc_by(5);
        m.queue_depth.set(3);
        m.time_to_first_token.observe(0.02);
        let text = m.render();
        for line in [
            "kiln_requests_total{outcome=\"stop\"} 2",
            "kiln_requests_total{outcome=\"429\"} 1",
            "kiln_generation_tokens_total 5",
            "kiln_queue_depth 3",
            "kiln_time_to_first_token_seconds_count 1",
            "# TYPE kiln_inter_token_latency_seconds histogram",
            "# TYPE kiln_batch_occupancy gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "no '{line}' in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
