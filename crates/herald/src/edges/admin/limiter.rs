//! Login attempts per client address: at most N a minute, so a password cannot be guessed by
//! brute force. IPv6 addresses count per /64 (one host usually holds the whole prefix). The table
//! is bounded; when it is full of addresses still inside their minute, new addresses are refused
//! until some minute ends (failing closed: an attacker with many addresses cannot buy more guesses).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Most addresses tracked at once.
pub const MAX_TRACKED: usize = 10_000;
const WINDOW: Duration = Duration::from_secs(60);

pub struct LoginLimiter {
    per_minute: u32,
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(s.into())
            }
        },
    }
}

impl LoginLimiter {
    pub fn new(per_minute: u32) -> LoginLimiter {
        LoginLimiter {
            per_minute,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one attempt from `ip`; false when it is over the limit.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let key = bucket(ip);
        let mut seen = self.seen.lock();
        if !seen.contains_key(&key) && seen.len() >= MAX_TRACKED {
            seen.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if seen.len() >= MAX_TRACKED {
                return false;
            }
        }
        let (start, count) = seen.entry(key).or_insert((now, 0));
        if now.duration_since(*start) >= WINDOW {
            *start = now;
            *count = 0;
        }
        *count = count.saturating_add(1);
        *count <= self.per_minute
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_bounded_per_address_and_minute() {
        let limiter = LoginLimiter::new(3);
        let t = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| limiter.allow(a, t)));
        assert!(!limiter.allow(a, t));
        assert!(limiter.allow(b, t), "another address has its own budget");
        assert!(limiter.allow(a, t + WINDOW), "a new minute, a new budget");
        // One IPv6 /64 is one budget.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!((0..3).all(|i| limiter.allow(v6(&format!("2001:db8::{i}")), t)));
        assert!(!limiter.allow(v6("2001:db8::ffff"), t));
    }

    #[test]
    fn a_full_table_refuses_new_addresses_until_minutes_end() {
        let limiter = LoginLimiter::new(1);
        let t = Instant::now();
        for i in 0..MAX_TRACKED as u32 {
            assert!(limiter.allow(IpAddr::from(i.to_be_bytes()), t));
        }
        let late: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(!limiter.allow(late, t));
        assert!(limiter.allow(late, t + WINDOW));
    }
}
