//! The results: medians per (rule count, mode), ratios against the ceiling (`off`) and against
//! iptables, the goals judged on what was measured; as a markdown table.

use crate::thousands;
use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use super::{Args, Cell, Mode};
use crate::services::report::{fmt_secs, median};

pub(super) struct Report {
    rows: Vec<Row>,
}

struct Row {
    n: usize,
    mode: Mode,
    reps: usize,
    conn_per_s: Option<f64>,
    conn_p50_us: Option<f64>,
    conn_vs_off: Option<f64>,
    conn_vs_iptables: Option<f64>,
    trans_per_s: Option<f64>,
    us_per_trans: Option<f64>,
    trans_vs_off: Option<f64>,
    program_s: Option<f64>,
    change_s: Option<f64>,
    full_s: Option<f64>,
    compile_s: Option<f64>,
    maps_s: Option<f64>,
    status: Option<String>,
    notes: Vec<String>,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    a.zip(b).map(|(a, b)| a / b)
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("-".to_owned(), f)
}

fn times(v: Option<f64>) -> String {
    opt(v, |v| format!("{v:.2}"))
}

impl Report {
    pub(super) fn new(
        counts: &[usize],
        modes: &[Mode],
        cells: &BTreeMap<(usize, Mode), Cell>,
    ) -> Self {
        let mut rows = Vec::new();
        for &n in counts {
            let med = |mode: Mode, f: &dyn Fn(&super::Sample) -> Option<f64>| {
                cells
                    .get(&(n, mode))
                    .and_then(|c| median(c.samples.iter().filter_map(f)))
            };
            let off_conn = med(Mode::Off, &|s| Some(s.conn.conn_per_s));
            let off_trans = med(Mode::Off, &|s| Some(s.pp.trans_per_s));
            let ipt_conn = med(Mode::Iptables, &|s| Some(s.conn.conn_per_s));
            for &mode in modes {
                let Some(cell) = cells.get(&(n, mode)) else {
                    continue;
                };
                let conn_per_s = med(mode, &|s| Some(s.conn.conn_per_s));
                let trans_per_s = med(mode, &|s| Some(s.pp.trans_per_s));
                let mut notes: Vec<String> = cell.notes.iter().cloned().collect();
                // A cell can hold samples and still have failed in a later repetition.
                if !cell.samples.is_empty()
                    && let Some(status) = &cell.status
                {
                    notes.push(format!("later repetition: {status}"));
                }
                rows.push(Row {
                    n,
                    mode,
                    reps: cell.samples.len(),
                    conn_per_s,
                    conn_p50_us: med(mode, &|s| Some(s.conn.p50_us)),
                    conn_vs_off: ratio(conn_per_s, off_conn),
                    conn_vs_iptables: ratio(conn_per_s, ipt_conn),
                    trans_per_s,
                    us_per_trans: med(mode, &|s| Some(s.pp.us_per_trans)),
                    trans_vs_off: ratio(trans_per_s, off_trans),
                    program_s: med(mode, &|s| s.program_s),
                    change_s: med(mode, &|s| s.change_s),
                    full_s: med(mode, &|s| s.full_s),
                    compile_s: med(mode, &|s| s.compile_s),
                    maps_s: med(mode, &|s| s.maps_s),
                    status: if cell.samples.is_empty() {
                        cell.status.clone()
                    } else {
                        None
                    },
                    notes,
                });
            }
        }
        Self { rows }
    }

    fn row(&self, n: usize, mode: Mode) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.n == n && r.mode == mode && r.reps > 0)
    }

    /// The goals, judged on what was measured: (goal, measured value, verdict).
    fn goals(&self) -> Vec<(String, String, &'static str)> {
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        let mut out = Vec::new();
        let berth: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| r.mode == Mode::Berth && r.reps > 0)
            .collect();
        if let (Some(first), Some(last)) = (berth.first(), berth.last())
            && first.n != last.n
        {
            // "Flat": within 10% from the fewest to the most rules, judged relative to `off`
            // at the same count when it was measured (the counts run minutes apart, and the
            // machine's speed drifts in between).
            for (what, a, b, a_raw, b_raw) in [
                (
                    "new connections/s",
                    first.conn_vs_off,
                    last.conn_vs_off,
                    first.conn_per_s,
                    last.conn_per_s,
                ),
                (
                    "established-flow transactions/s",
                    first.trans_vs_off,
                    last.trans_vs_off,
                    first.trans_per_s,
                    last.trans_per_s,
                ),
            ] {
                let (a, b, basis) = match (a, b) {
                    (Some(a), Some(b)) => (a, b, " relative to off"),
                    _ => (a_raw.unwrap_or(f64::NAN), b_raw.unwrap_or(f64::NAN), ""),
                };
                out.push((
                    format!(
                        "berth flat in the number of rules ({what}, {} → {} rules)",
                        first.n, last.n
                    ),
                    format!(
                        "{:.2}x{basis} at {} vs at {} rules ({:.2} vs {:.2})",
                        b / a,
                        last.n,
                        first.n,
                        b,
                        a
                    ),
                    verdict(b / a >= 0.9),
                ));
            }
        }
        // The goal is stated at 1,000 rules; without that count, at the one nearest to it.
        if let Some(b) = berth.iter().min_by_key(|r| r.n.abs_diff(1000)) {
            let at = if b.n == 1000 {
                String::new()
            } else {
                " (the goal is stated at 1000)".to_owned()
            };
            let goal = format!(
                "berth ≥ 2x iptables' new-connection rate at {} rules{at}",
                b.n
            );
            match self.row(b.n, Mode::Iptables).and_then(|r| r.conn_per_s) {
                Some(x) => {
                    let r = b.conn_per_s.unwrap_or(f64::NAN) / x;
                    let legacy = self
                        .row(b.n, Mode::IptablesLegacy)
                        .and_then(|l| l.conn_per_s)
                        .map_or(String::new(), |l| {
                            format!(
                                " (vs iptables-legacy: {:.2}x)",
                                b.conn_per_s.unwrap_or(f64::NAN) / l
                            )
                        });
                    out.push((goal, format!("{r:.2}x{legacy}"), verdict(r >= 2.0)));
                }
                None => out.push((goal, "iptables not measured at this count".into(), "n/a")),
            }
        }
        out
    }

    pub(super) fn render(
        &self,
        args: &Args,
        environment: &[(&str, String)],
        took: Duration,
    ) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nNetworkPolicy enforcement: a client pod connecting to a server pod on one bridge; \
             the server's ingress policy has N rules, each allowing one /32 to TCP 8080, the \
             client's /32 last. New connections: {t} threads × (connect, one {m}-byte \
             request/response, close); established flows: {t} persistent connections doing \
             {m}-byte request/response. {d} ms per measurement, medians of {r} interleaved reps.",
            t = args.threads,
            m = super::load::MSG,
            d = args.duration_ms,
            r = args.reps,
        );
        let env: Vec<String> = environment
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(out, "{}\n", env.join("; "));
        let _ = writeln!(
            out,
            "| rules | mode | new conn/s | vs off | vs iptables | connect p50 | transactions/s | µs/transaction | vs off | program N rules | apply +1 rule |"
        );
        let _ = writeln!(
            out,
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        let mut footnotes = Vec::new();
        for r in &self.rows {
            let marks = crate::footnote_marks(
                &mut footnotes,
                &format!("{} {}", r.n, r.mode.name()),
                r.status.iter().chain(&r.notes),
            );
            let mode = if r.mode == Mode::Berth {
                "**berth**".to_owned()
            } else if r.mode == Mode::Off {
                "off (ceiling)".to_owned()
            } else {
                r.mode.name().to_owned()
            };
            let program = match (&r.status, r.mode) {
                (Some(status), _) => status.split(':').next().unwrap_or("-").to_owned(),
                (None, Mode::Off) => "-".to_owned(),
                (None, _) => fmt_secs(r.program_s),
            };
            let change = match r.mode {
                Mode::Off => "-".to_owned(),
                _ if r.status.is_some() => "-".to_owned(),
                Mode::Berth => match (r.compile_s, r.maps_s) {
                    (Some(c), Some(m)) => format!(
                        "{} (agent: compile {}, maps {})",
                        fmt_secs(r.change_s),
                        fmt_secs(Some(c)),
                        fmt_secs(Some(m))
                    ),
                    _ => fmt_secs(r.change_s),
                },
                Mode::Iptables | Mode::IptablesLegacy => format!(
                    "{} (whole table again: {})",
                    fmt_secs(r.change_s),
                    fmt_secs(r.full_s)
                ),
            };
            let _ = writeln!(
                out,
                "| {} | {mode}{marks} | {} | {} | {} | {} | {} | {} | {} | {program} | {change} |",
                thousands(r.n as f64),
                opt(r.conn_per_s, thousands),
                times(r.conn_vs_off),
                times(r.conn_vs_iptables),
                opt(r.conn_p50_us, |v| format!("{v:.1} µs")),
                opt(r.trans_per_s, thousands),
                opt(r.us_per_trans, |v| format!("{v:.1}")),
                times(r.trans_vs_off),
            );
        }
        if !footnotes.is_empty() {
            out.push('\n');
            for (i, note) in footnotes.iter().enumerate() {
                let _ = writeln!(out, "[{}] {note}", i + 1);
            }
        }
        let goals = self.goals();
        if !goals.is_empty() {
            out.push_str("\ngoals:\n");
        }
        for (goal, value, verdict) in goals {
            let _ = writeln!(out, "  {verdict:<7} {goal}: {value}");
        }
        let _ = writeln!(
            out,
            "\nwhole run: {:.1} min (setup, all measurements, cleanup)",
            took.as_secs_f64() / 60.0
        );
        out
    }
}
