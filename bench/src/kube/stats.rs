//! What a contender costs and what it says about itself: CPU time and memory from /proc,
//! Prometheus metrics scraped inside its node namespace, quantiles of its own histograms.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

/// CPU seconds of `pid`: its own (utime + stime) and its reaped children's (cutime + cstime):
/// kube-proxy does much of its work in `iptables-restore`/`iptables-save` children.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub own_s: f64,
    pub children_s: f64,
}

impl Cpu {
    pub fn total(&self) -> f64 {
        self.own_s + self.children_s
    }

    pub fn since(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            own_s: self.own_s - earlier.own_s,
            children_s: self.children_s - earlier.children_s,
        }
    }
}

pub fn cpu(pid: u32) -> Option<Cpu> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14-17 (1-based), i.e. 11-14 after the state.
    let tick = |i: usize| -> Option<f64> { f.get(i)?.parse::<f64>().ok() };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(Cpu {
        own_s: (tick(11)? + tick(12)?) / hz,
        children_s: (tick(13)? + tick(14)?) / hz,
    })
}

/// Memory of `pid` in MB: (VmRSS now, VmHWM = its peak).
pub fn rss_mb(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> Option<f64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((kb("VmRSS:")? / 1024.0, kb("VmHWM:")? / 1024.0))
}

/// VmRSS of `pid` and all its descendants, in MB.
fn tree_rss_mb(pid: u32) -> f64 {
    let mut total = 0.0;
    let mut stack = vec![pid];
    let mut seen = 0;
    while let Some(p) = stack.pop() {
        seen += 1;
        if seen > 256 {
            break;
        }
        total += rss_mb(p).map_or(0.0, |(rss, _)| rss);
        for task in crate::leftovers::entries(&PathBuf::from(format!("/proc/{p}/task"))) {
            if let Ok(children) = std::fs::read_to_string(format!("/proc/{p}/task/{task}/children"))
            {
                stack.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    total
}

/// Samples the memory of each watched process tree (the process and its children, such as
/// kube-proxy's `iptables-restore`) every 100 ms and keeps the peak per name.
pub struct TreeSampler {
    watched: Arc<Mutex<BTreeMap<String, (u32, f64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TreeSampler {
    pub fn start() -> Self {
        let watched: Arc<Mutex<BTreeMap<String, (u32, f64)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (w, s) = (watched.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("tree-sampler".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let pids: Vec<(String, u32)> = w
                        .lock()
                        .map(|m| m.iter().map(|(k, (pid, _))| (k.clone(), *pid)).collect())
                        .unwrap_or_default();
                    for (name, pid) in pids {
                        let mb = tree_rss_mb(pid);
                        if let Ok(mut m) = w.lock()
                            && let Some(entry) = m.get_mut(&name)
                            && entry.0 == pid
                        {
                            entry.1 = entry.1.max(mb);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .ok();
        Self {
            watched,
            stop,
            thread,
        }
    }

    /// Watches `pid` under `name` (replacing the process watched before; the peak stays).
    pub fn watch(&self, name: &str, pid: u32) {
        if let Ok(mut m) = self.watched.lock() {
            let peak = m.get(name).map_or(0.0, |e| e.1);
            m.insert(name.to_owned(), (pid, peak));
        }
    }

    pub fn peak_mb(&self, name: &str) -> Option<f64> {
        self.watched
            .lock()
            .ok()?
            .get(name)
            .map(|e| e.1)
            .filter(|&p| p > 0.0)
    }
}

impl Drop for TreeSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `GET path` over HTTP/1.0 to `addr` from inside network namespace `netns`.
pub fn http_get_in(netns: &Path, addr: &str, path: &str) -> Result<String> {
    let netns = netns.to_owned();
    let (addr, path) = (addr.to_owned(), path.to_owned());
    std::thread::spawn(move || -> Result<String> {
        let ns =
            std::fs::File::open(&netns).with_context(|| format!("opening {}", netns.display()))?;
        // SAFETY: setns on a valid namespace fd; affects only this short-lived thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns");
        }
        let sock: std::net::SocketAddr = addr.parse()?;
        let mut stream = TcpStream::connect_timeout(&sock, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("malformed HTTP response")?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
        }
        Ok(body.to_owned())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("scrape thread panicked"))?
}

/// The value of sample `series` (name and labels exactly as exposed).
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// A histogram's cumulative buckets `(le, count)` (le = +Inf last) for metric `name`
/// (unlabelled apart from `le`).
pub fn histogram(exposition: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut out: Vec<(f64, f64)> = exposition
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (le, value) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, value.split_whitespace().next()?.parse().ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The buckets observed between two scrapes.
pub fn histogram_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, c)| {
            let b = before.iter().find(|x| x.0 == le).map_or(0.0, |x| x.1);
            (le, c - b)
        })
        .collect()
}

/// The `q` quantile (0..1) of cumulative buckets, interpolated linearly inside the bucket as
/// Prometheus' `histogram_quantile` does; None without observations. A quantile in the +Inf
/// bucket is reported as the largest finite bound.
pub fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev_le = 0.0;
    let mut prev_count = 0.0;
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev_le);
            }
            let in_bucket = count - prev_count;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(prev_le + (le - prev_le) * (rank - prev_count) / in_bucket);
        }
        prev_le = le;
        prev_count = count;
    }
    Some(prev_le)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPO: &str = "\
# HELP x_seconds test
x_seconds_bucket{le=\"0.001\"} 2
x_seconds_bucket{le=\"0.01\"} 6
x_seconds_bucket{le=\"0.1\"} 10
x_seconds_bucket{le=\"+Inf\"} 10
x_seconds_sum 0.2
x_seconds_count 10
";

    #[test]
    fn histograms_parse_and_interpolate() {
        let h = histogram(EXPO, "x_seconds");
        assert_eq!(h.len(), 4);
        assert_eq!(h[3], (f64::INFINITY, 10.0));
        let p50 = bucket_quantile(&h, 0.5).expect("p50");
        // rank 5 of 10: in (0.001, 0.01], 3 of its 4.
        assert!((p50 - (0.001 + 0.009 * 0.75)).abs() < 1e-12, "{p50}");
        assert_eq!(bucket_quantile(&h, 1.0), Some(0.1));
        let d = histogram_delta(&h, &h);
        assert_eq!(bucket_quantile(&d, 0.5), None);
        assert_eq!(sample(EXPO, "x_seconds_count"), Some(10.0));
    }

    #[test]
    fn own_cpu_and_memory_are_readable() {
        let pid = std::process::id();
        assert!(cpu(pid).is_some());
        let (rss, hwm) = rss_mb(pid).expect("status");
        assert!(rss > 0.0 && hwm >= rss);
    }
}
