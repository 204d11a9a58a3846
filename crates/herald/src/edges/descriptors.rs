//! The node's file-descriptor budget: a reserve no listener may use, and a bounded share per
//! listener, so that a flood of connections on one port never locks out the others (`/health`,
//! the API, WebSocket clients, the other device protocols).
//!
//! At start the soft `RLIMIT_NOFILE` is raised to the hard limit. Of the limit, the descriptors
//! already open and a reserve (`max(64, 5%)`, at most a quarter of the limit) are kept for
//! everything that is not an accepted connection (broker, database, spool, hooks). The rest is
//! split: each listener is guaranteed `min(wanted, usable / 2n)` descriptors (its floor); the
//! remainder is a pool any listener may borrow from, up to its own `wanted` (its configured
//! connection bound). A listener at its share accepts and closes at once, so the kernel backlog
//! does not fill with connections nobody will serve; each such close is counted.

use crate::core::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Never fewer descriptors than this are kept out of the listeners' reach.
const MIN_RESERVE: u64 = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

/// Counts connections held outside the budget's permits (the WebSocket sessions of the public
/// listener, which outlive the HTTP connection that upgraded them).
pub type ExternalCount = Box<dyn Fn() -> usize + Send + Sync>;

/// One listener's entry in the plan: its name and how many connections it wants at most.
pub struct ListenerPlan {
    pub name: String,
    pub wanted: usize,
    pub external: Option<ExternalCount>,
}

struct Listener {
    name: String,
    wanted: usize,
    floor: usize,
    permits: AtomicUsize,
    external: Option<ExternalCount>,
    in_use: Gauge,
    refused: Counter,
}

impl Listener {
    fn in_use(&self) -> usize {
        self.permits.load(Ordering::Acquire) + self.external.as_ref().map_or(0, |count| count())
    }
}

struct Inner {
    limit: u64,
    reserve: u64,
    usable: usize,
    pool: usize,
    listeners: Vec<Listener>,
}

/// The budget of one node.
#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

/// A listener's handle on the budget.
#[derive(Clone)]
pub struct Share {
    inner: Arc<Inner>,
    index: usize,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The listener holds its configured number of connections.
    ListenerFull,
    /// The listener used its guaranteed descriptors and the shared pool is exhausted.
    Descriptors,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::ListenerFull => "max_connections",
            Refusal::Descriptors => "descriptors",
        }
    }
}

/// One accepted connection's descriptor; released when dropped.
pub struct Permit {
    inner: Arc<Inner>,
    index: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let l = &self.inner.listeners[self.index];
        l.permits.fetch_sub(1, Ordering::AcqRel);
        l.in_use.dec();
    }
}

/// The descriptor limit and the reserve kept for non-listener use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub limit: u64,
    pub reserve: u64,
    pub open_at_start: u64,
}

impl Limits {
    /// Raises the soft `RLIMIT_NOFILE` to the hard limit (logged) and counts the descriptors
    /// open now.
    pub fn of_process() -> Limits {
        let limit = raise_nofile();
        let open_at_start = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        Limits::new(limit, open_at_start)
    }

    pub fn new(limit: u64, open_at_start: u64) -> Limits {
        let reserve = MIN_RESERVE.max(limit / 20).min(limit / 4);
        Limits {
            limit,
            reserve,
            open_at_start,
        }
    }

    /// Descriptors the listeners may hold together.
    pub fn usable(&self) -> usize {
        let usable = self
            .limit
            .saturating_sub(self.reserve)
            .saturating_sub(self.open_at_start);
        usize::try_from(usable).unwrap_or(usize::MAX)
    }
}

/// The soft descriptor limit after trying to raise it to the hard one.
fn raise_nofile() -> u64 {
    use rlimit::Resource;
    let Ok((soft, hard)) = Resource::NOFILE.get() else {
        return 1024;
    };
    if soft < hard && Resource::NOFILE.set(hard, hard).is_ok() {
        tracing::info!(
            from = soft,
            to = hard,
            "raised the soft descriptor limit to the hard limit"
        );
        return hard;
    }
    soft
}

impl Budget {
    /// Splits `limits` between `listeners` and registers the metrics.
    pub fn new(limits: Limits, listeners: Vec<ListenerPlan>, metrics: &Metrics) -> Budget {
        let usable = limits.usable();
        let n = listeners.len().max(1);
        let in_use: Family<ListenerLabel, Gauge> = Family::default();
        let share_gauge: Family<ListenerLabel, Gauge> = Family::default();
        let refused: Family<ListenerLabel, Counter> = Family::default();
        let listeners: Vec<Listener> = listeners
            .into_iter()
            .map(|plan| {
                let label = ListenerLabel {
                    listener: plan.name.clone(),
                };
                Listener {
                    floor: plan.wanted.min(usable / (2 * n)),
                    wanted: plan.wanted,
                    name: plan.name,
                    permits: AtomicUsize::new(0),
                    external: plan.external,
                    in_use: in_use.get_or_create(&label).clone(),
                    refused: refused.get_or_create(&label).clone(),
                }
            })
            .collect();
        let floors: usize = listeners.iter().map(|l| l.floor).sum();
        let inner = Arc::new(Inner {
            limit: limits.limit,
            reserve: limits.reserve,
            usable,
            pool: usable.saturating_sub(floors),
            listeners,
        });
        let budget = Budget { inner };
        for l in &budget.inner.listeners {
            let label = ListenerLabel {
                listener: l.name.clone(),
            };
            let max = budget.max_of(l);
            share_gauge
                .get_or_create(&label)
                .set(i64::try_from(max).unwrap_or(i64::MAX));
            tracing::info!(
                listener = %l.name,
                guaranteed = l.floor,
                max,
                "descriptor share"
            );
        }
        tracing::info!(
            limit = limits.limit,
            reserve = limits.reserve,
            open_at_start = limits.open_at_start,
            usable,
            "descriptor budget"
        );
        let gauge = |value: u64| {
            let g = Gauge::<i64>::default();
            g.set(i64::try_from(value).unwrap_or(i64::MAX));
            g
        };
        metrics.register(
            "descriptor_limit",
            "The soft RLIMIT_NOFILE of the process (after raising it to the hard limit)",
            gauge(limits.limit),
        );
        metrics.register(
            "descriptor_reserve",
            "Descriptors kept out of every listener's reach (broker, database, spool, hooks)",
            gauge(limits.reserve),
        );
        metrics.register(
            "descriptors_open",
            "Descriptors the process holds now (/proc/self/fd), listeners and reserve together",
            OpenDescriptors,
        );
        metrics.register(
            "listener_descriptors",
            "Descriptors held by each listener's accepted connections",
            in_use,
        );
        metrics.register(
            "listener_descriptor_share",
            "Most descriptors each listener may hold (its guaranteed share plus the shared pool, at most its connection bound)",
            share_gauge,
        );
        metrics.register(
            "listener_refused",
            "Connections closed at accept because their listener was at its connection bound or descriptor share",
            refused,
        );
        budget
    }

    fn max_of(&self, l: &Listener) -> usize {
        l.wanted.min(l.floor + self.inner.pool)
    }

    /// The handle of the listener named `name` (as planned).
    pub fn share(&self, name: &str) -> Option<Share> {
        let index = self.inner.listeners.iter().position(|l| l.name == name)?;
        Some(Share {
            inner: self.inner.clone(),
            index,
        })
    }

    pub fn limit(&self) -> u64 {
        self.inner.limit
    }

    pub fn reserve(&self) -> u64 {
        self.inner.reserve
    }

    pub fn usable(&self) -> usize {
        self.inner.usable
    }
}

impl Share {
    /// Admits one accepted connection, or says why not (and counts the refusal). Concurrent
    /// accepts on different listeners may overshoot the pool by one each; the reserve covers it.
    pub fn try_acquire(&self) -> Result<Permit, Refusal> {
        let inner = &self.inner;
        let me = &inner.listeners[self.index];
        let mine = me.in_use();
        let refusal = if mine >= me.wanted {
            Some(Refusal::ListenerFull)
        } else if mine >= me.floor {
            let borrowed: usize = inner
                .listeners
                .iter()
                .map(|l| l.in_use().saturating_sub(l.floor))
                .sum();
            (borrowed >= inner.pool).then_some(Refusal::Descriptors)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            me.refused.inc();
            return Err(refusal);
        }
        me.permits.fetch_add(1, Ordering::AcqRel);
        me.in_use.inc();
        Ok(Permit {
            inner: inner.clone(),
            index: self.index,
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.listeners[self.index].name
    }

    /// Most connections this listener may hold.
    pub fn max(&self) -> usize {
        let l = &self.inner.listeners[self.index];
        l.wanted.min(l.floor + self.inner.pool)
    }

    /// Descriptors guaranteed to this listener whatever the others hold.
    pub fn guaranteed(&self) -> usize {
        self.inner.listeners[self.index].floor
    }
}

/// Counts `/proc/self/fd` when `/metrics` is rendered.
#[derive(Debug)]
struct OpenDescriptors;

impl prometheus_client::metrics::TypedMetric for OpenDescriptors {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Gauge;
}

impl prometheus_client::encoding::EncodeMetric for OpenDescriptors {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64);
        encoder.encode_gauge(&open)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Gauge
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(name: &str, wanted: usize) -> ListenerPlan {
        ListenerPlan {
            name: name.into(),
            wanted,
            external: None,
        }
    }

    #[test]
    fn reserve_is_five_percent_at_least_64_at_most_a_quarter() {
        assert_eq!(Limits::new(1 << 20, 0).reserve, (1 << 20) / 20);
        assert_eq!(Limits::new(1024, 0).reserve, 64);
        assert_eq!(Limits::new(64, 0).reserve, 16);
        assert_eq!(Limits::new(1000, 100).usable(), 1000 - 64 - 100);
    }

    #[test]
    fn a_flooded_listener_leaves_the_others_their_floor() {
        let metrics = Metrics::new();
        // usable = 1000 - 64 - 36 = 900; floors min(wanted, 900 / 6): 150, 100, 150; pool 500.
        let budget = Budget::new(
            Limits::new(1000, 36),
            vec![
                plan("public", 10_000),
                plan("internal", 100),
                plan("gt06", 10_000),
            ],
            &metrics,
        );
        let public = budget.share("public").unwrap();
        let internal = budget.share("internal").unwrap();
        let gt06 = budget.share("gt06").unwrap();
        assert_eq!(internal.guaranteed(), 100);
        assert_eq!(gt06.guaranteed(), 150);
        let pool = 900 - 150 - 100 - 150;
        let mut flood = Vec::new();
        while let Ok(p) = gt06.try_acquire() {
            flood.push(p);
        }
        assert_eq!(flood.len(), 150 + pool);
        assert_eq!(gt06.try_acquire().err(), Some(Refusal::Descriptors));
        let publics: Vec<_> = (0..150).map(|_| public.try_acquire().unwrap()).collect();
        assert_eq!(public.try_acquire().err(), Some(Refusal::Descriptors));
        let internals: Vec<_> = (0..100).map(|_| internal.try_acquire().unwrap()).collect();
        assert_eq!(internal.try_acquire().err(), Some(Refusal::ListenerFull));
        drop(flood);
        assert!(public.try_acquire().is_ok());
        drop((publics, internals));
        let text = metrics.render();
        assert!(
            text.contains("herald_listener_refused_total{listener=\"gt06\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn external_count_is_part_of_the_share() {
        let metrics = Metrics::new();
        let sessions = Arc::new(AtomicUsize::new(0));
        let counted = sessions.clone();
        let budget = Budget::new(
            Limits::new(1000, 0),
            vec![ListenerPlan {
                name: "public".into(),
                wanted: 10,
                external: Some(Box::new(move || counted.load(Ordering::Relaxed))),
            }],
            &metrics,
        );
        let public = budget.share("public").unwrap();
        sessions.store(9, Ordering::Relaxed);
        let one = public.try_acquire().unwrap();
        assert_eq!(public.try_acquire().err(), Some(Refusal::ListenerFull));
        drop(one);
        assert!(public.try_acquire().is_ok());
    }
}
