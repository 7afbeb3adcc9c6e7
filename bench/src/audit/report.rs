//! The results: per workload, each contender's median time, its ratio to `off`, its overhead per
//! syscall (counting contenders) or per recorded event (recording ones); berth's delivery
//! accounting; the goals judged on what was measured; as markdown.

use crate::thousands;
use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use super::{Account, Args, Cell, Contender, Sample, Workload};
use crate::services::report::median;

pub(super) struct Report<'a> {
    pub args: &'a Args,
    pub workloads: &'a [Workload],
    pub contenders: &'a [Contender],
    pub cells: &'a BTreeMap<(Workload, Contender), Cell>,
    pub attached: &'a BTreeMap<Contender, Vec<String>>,
    pub notes: &'a [String],
    pub environment: &'a [(&'static str, String)],
}

fn ms(s: f64) -> String {
    if s < 10.0 {
        format!("{:.1} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

impl Report<'_> {
    fn cell(&self, w: Workload, c: Contender) -> Option<&Cell> {
        self.cells.get(&(w, c))
    }

    fn med(&self, w: Workload, c: Contender, f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        self.cell(w, c)
            .and_then(|cell| median(cell.samples.iter().filter_map(f)))
    }

    fn time(&self, w: Workload, c: Contender) -> Option<f64> {
        self.med(w, c, |s| Some(s.secs))
    }

    /// Time over `off`'s, in seconds.
    fn overhead(&self, w: Workload, c: Contender) -> Option<f64> {
        Some(self.time(w, c)? - self.time(w, Contender::Off)?)
    }

    /// Recorded events (openat, execve, connect calls) per run, and where the number comes
    /// from.
    fn events_per_run(&self, w: Workload) -> Option<(f64, &'static str)> {
        match w {
            Workload::Loop => Some((
                self.args.loop_calls as f64,
                "exact: one openat per iteration",
            )),
            Workload::Unaudited => None,
            _ => {
                if let Some(n) = self.med(w, Contender::Strace, |s| s.seen.map(|n| n as f64)) {
                    return Some((n, "calls strace printed"));
                }
                if let Some(n) = self.med(w, Contender::BerthEvents, |s| {
                    s.account
                        .as_ref()
                        .filter(|a| a.gap_lost == 0)
                        .map(|a| a.delivered_all as f64)
                }) {
                    return Some((n, "records berth delivered"));
                }
                self.med(w, Contender::BpftracePrintf, |s| s.seen.map(|n| n as f64))
                    .map(|n| (n, "lines bpftrace printed"))
            }
        }
    }

    /// Syscalls the workload makes per run (what a count-everything rule counts).
    fn syscalls_per_run(&self, w: Workload) -> Option<(f64, &'static str)> {
        let w = if w == Workload::Unaudited {
            Workload::Loop
        } else {
            w
        };
        if let Some(n) = self.med(w, Contender::BerthCounts, |s| s.counted.map(|n| n as f64)) {
            return Some((n, "berth's counters"));
        }
        (w == Workload::Loop).then_some((2.0 * self.args.loop_calls as f64, "2 per iteration"))
    }

    /// The per-call cost: (µs, unit).
    fn per_call(&self, w: Workload, c: Contender) -> Option<(f64, &'static str)> {
        let over = self.overhead(w, c)?;
        if c == Contender::Off {
            return None;
        }
        if c.counts() || w == Workload::Unaudited {
            let (n, _) = self.syscalls_per_run(w)?;
            Some((over / n * 1e6, "/syscall"))
        } else {
            let (n, _) = self.events_per_run(w)?;
            Some((over / n * 1e6, "/event"))
        }
    }

    /// CPU per call: the worker's extra CPU time over off's plus the tool's own, per syscall
    /// or per event as [`Self::per_call`] divides.
    fn cpu_per_call(&self, w: Workload, c: Contender) -> Option<f64> {
        if c == Contender::Off {
            return None;
        }
        let extra = self.med(w, c, |s| Some(s.worker_cpu_s))?
            - self.med(w, Contender::Off, |s| Some(s.worker_cpu_s))?
            + self.med(w, c, |s| s.tool_cpu_s).unwrap_or(0.0);
        let (n, _) = if c.counts() || w == Workload::Unaudited {
            self.syscalls_per_run(w)?
        } else {
            self.events_per_run(w)?
        };
        Some(extra / n * 1e6)
    }

    fn describe(&self, w: Workload) -> String {
        let a = self.args;
        let what = match w {
            Workload::Loop => format!(
                "{} × (openat + close) of one tmpfs file, in the audited cgroup",
                thousands(a.loop_calls as f64)
            ),
            Workload::Tar => format!(
                "GNU tar extracting {} files of 512 bytes into tmpfs, in the audited cgroup",
                thousands(a.archive_files as f64)
            ),
            Workload::Exec => format!(
                "{} × (fork + exec {} + wait), in the audited cgroup",
                thousands(a.execs as f64),
                a.exec_program.display()
            ),
            Workload::Unaudited => format!(
                "the loop ({} × openat + close) in ANOTHER cgroup that nothing selects, while \
                 the contender is attached for the audited one",
                thousands(a.loop_calls as f64)
            ),
        };
        let mut per = Vec::new();
        if let Some((n, src)) = self.events_per_run(w) {
            per.push(format!("{} recorded events per run ({src})", thousands(n)));
        }
        if let Some((n, src)) = self.syscalls_per_run(w) {
            per.push(format!("{} syscalls per run ({src})", thousands(n)));
        }
        if per.is_empty() {
            what
        } else {
            format!("{what}; {}", per.join(", "))
        }
    }

    fn table(&self, out: &mut String, w: Workload, footnotes: &mut Vec<String>) {
        let _ = writeln!(out, "\n### {}: {}\n", w.name(), self.describe(w));
        let _ = writeln!(
            out,
            "| contender | median time | vs off | overhead | µs per call | spread | worker CPU | tool CPU | CPU µs per call | events seen (lost) / syscalls counted | reps |"
        );
        let _ = writeln!(
            out,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let off = self.time(w, Contender::Off);
        let off_cpu = self.med(w, Contender::Off, |s| Some(s.worker_cpu_s));
        for &c in self.contenders {
            let Some(cell) = self.cell(w, c) else {
                continue;
            };
            let mut notes: Vec<String> = cell.notes.iter().cloned().collect();
            if !cell.samples.is_empty()
                && let Some(status) = &cell.status
            {
                notes.push(format!("later round: {status}"));
            }
            if let Some(a) = cell.samples.first().and_then(|s| s.account.as_ref())
                && !a.by_syscall.is_empty()
            {
                let by: Vec<String> = a
                    .by_syscall
                    .iter()
                    .map(|(k, v)| format!("{k} {}", thousands(*v as f64)))
                    .collect();
                notes.push(format!(
                    "records delivered in the first round, by syscall: {}",
                    by.join(", ")
                ));
            }
            let status: Vec<String> = if cell.samples.is_empty() {
                cell.status.iter().cloned().collect()
            } else {
                Vec::new()
            };
            let marks = crate::footnote_marks(
                footnotes,
                &format!("{} / {}", w.name(), c.name()),
                status.iter().chain(&notes),
            );
            let name = match c {
                Contender::BerthCounts | Contender::BerthEvents => format!("**{}**", c.name()),
                _ => c.name().to_owned(),
            };
            if cell.samples.is_empty() {
                let why = cell
                    .status
                    .as_deref()
                    .and_then(|s| s.split(':').next())
                    .unwrap_or("-");
                let _ = writeln!(out, "| {name}{marks} | {why} | | | | | | | | | 0 |");
                continue;
            }
            let t = self.time(w, c).unwrap_or(f64::NAN);
            let secs: Vec<f64> = cell.samples.iter().map(|s| s.secs).collect();
            let lo = secs.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = secs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let spread = if t > 0.0 {
                format!("±{:.0}%", (hi - lo) / t * 50.0)
            } else {
                "-".to_owned()
            };
            let ratio = off.map_or("-".to_owned(), |o| format!("{:.2}×", t / o));
            let over = if c == Contender::Off {
                "-".to_owned()
            } else {
                self.overhead(w, c).map_or("-".to_owned(), ms)
            };
            let per = self
                .per_call(w, c)
                .map_or("-".to_owned(), |(v, unit)| format!("{v:.3} {unit}"));
            let cpu = self.med(w, c, |s| Some(s.worker_cpu_s)).unwrap_or(f64::NAN);
            let cpu = match (c, off_cpu) {
                (Contender::Off, _) | (_, None) => ms(cpu),
                (_, Some(o)) => format!("{} ({:+.0}%)", ms(cpu), (cpu / o - 1.0) * 100.0),
            };
            let mut seen = self
                .med(w, c, |s| s.seen.map(|n| n as f64))
                .map_or("-".to_owned(), thousands);
            let lost = self.med(w, c, |s| {
                s.lost
                    .or(s.account.as_ref().map(|a| a.gap_lost))
                    .map(|n| n as f64)
            });
            if let Some(lost) = lost.filter(|&l| l > 0.0) {
                seen.push_str(&format!(" ({} lost)", thousands(lost)));
            }
            if let Some(n) = self.med(w, c, |s| s.counted.map(|n| n as f64)) {
                seen = format!("{} syscalls", thousands(n));
            }
            let agent_cpu = self.med(w, c, |s| s.tool_cpu_s).map_or("-".to_owned(), ms);
            let cpu_per = self
                .cpu_per_call(w, c)
                .map_or("-".to_owned(), |v| format!("{v:.3}"));
            let _ = writeln!(
                out,
                "| {name}{marks} | {} | {ratio} | {over} | {per} | {spread} | {cpu} | {agent_cpu} | {cpu_per} | {seen} | {} |",
                ms(t),
                cell.samples.len()
            );
        }
    }

    /// berth's delivery on the loop in events mode, rep by rep.
    fn delivery(&self, out: &mut String) -> Vec<Account> {
        let Some(cell) = self.cell(Workload::Loop, Contender::BerthEvents) else {
            return Vec::new();
        };
        let accounts: Vec<(f64, Option<f64>, Account)> = cell
            .samples
            .iter()
            .filter_map(|s| s.account.clone().map(|a| (s.secs, s.tool_cpu_s, a)))
            .collect();
        if accounts.is_empty() {
            return Vec::new();
        }
        let _ = writeln!(
            out,
            "\n### berth events: delivery of the loop's openat records (every one on the stream, or counted as lost)\n"
        );
        let _ = writeln!(
            out,
            "| round | produced | delivered | lost (gap records) | lost (ring, metric) | unaccounted | kernel records | workload | events/s of workload time | stream done after | events/s to the last line | agent CPU per delivered event |"
        );
        let _ = writeln!(
            out,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (i, (secs, agent_cpu, a)) in accounts.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                i + 1,
                a.produced.map_or("-".to_owned(), |p| thousands(p as f64)),
                thousands(a.delivered as f64),
                thousands(a.gap_lost as f64),
                thousands(a.ring_lost as f64),
                a.unaccounted().map_or("-".to_owned(), |u| u.to_string()),
                thousands(a.records as f64),
                ms(*secs),
                thousands(a.delivered as f64 / secs),
                a.stream_s.map_or("-".to_owned(), ms),
                a.stream_s
                    .map_or("-".to_owned(), |s| thousands(a.delivered as f64 / s)),
                agent_cpu
                    .filter(|_| a.delivered_all > 0)
                    .map_or("-".to_owned(), |c| format!(
                        "{:.1} µs",
                        c / a.delivered_all as f64 * 1e6
                    )),
            );
        }
        let _ = writeln!(
            out,
            "\n(kernel records: `berth_audit_kernel_total{{outcome=\"records\"}}` over the run, every \
             syscall record the kernel emitted for the cgroup; \"stream done after\": from `go` \
             to the last line written to the stream file.)"
        );
        accounts.into_iter().map(|(_, _, a)| a).collect()
    }

    fn goals(&self, accounts: &[Account]) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let main = [Workload::Loop, Workload::Tar, Workload::Exec];
        // Counts mode vs the bpftrace counter: overhead ratio.
        for &w in main.iter().filter(|w| self.workloads.contains(w)) {
            let (Some(b), Some(t)) = (
                self.overhead(w, Contender::BerthCounts),
                self.overhead(w, Contender::BpftraceCounter),
            ) else {
                continue;
            };
            let ok = b <= 1.1 * t.max(0.0);
            let ratio = if t > 0.0 {
                format!("{:.2}×", b / t)
            } else {
                "n/a (bpftrace's overhead ≤ 0: within noise)".to_owned()
            };
            out.push((
                verdict(ok),
                format!(
                    "[{}] counts mode overhead ≤ 1.1× the bpftrace counter's: berth {} vs bpftrace {} → {ratio}",
                    w.name(),
                    ms(b),
                    ms(t)
                ),
            ));
        }
        // Events mode per-event cost vs bpftrace printf (≥5× cheaper) and strace (≥10×).
        for (other, factor) in [(Contender::BpftracePrintf, 5.0), (Contender::Strace, 10.0)] {
            for &w in main.iter().filter(|w| self.workloads.contains(w)) {
                let (Some((b, _)), Some((o, _))) = (
                    self.per_call(w, Contender::BerthEvents),
                    self.per_call(w, other),
                ) else {
                    continue;
                };
                let (ok, mut ratio) = if b <= 0.0 {
                    (o > 0.0, "berth's overhead ≤ 0 (within noise)".to_owned())
                } else {
                    (o / b >= factor, format!("{:.1}× cheaper", o / b))
                };
                if let (Some(bc), Some(oc)) = (
                    self.cpu_per_call(w, Contender::BerthEvents),
                    self.cpu_per_call(w, other),
                ) && bc > 0.0
                {
                    ratio.push_str(&format!(
                        " (by CPU time, worker + tool: {bc:.3} vs {oc:.3} µs → {:.1}×",
                        oc / bc
                    ));
                    let delivered = self.med(w, Contender::BerthEvents, |s| {
                        let a = s.account.as_ref()?;
                        let all = a.delivered_all + a.gap_lost;
                        (all > 0).then(|| a.delivered_all as f64 / all as f64)
                    });
                    if let Some(d) = delivered.filter(|&d| d < 0.999) {
                        ratio.push_str(&format!(
                            "; berth's agent decoded only the {:.0}% of records delivered",
                            d * 100.0
                        ));
                    }
                    ratio.push(')');
                }
                out.push((
                    verdict(ok),
                    format!(
                        "[{}] events mode ≥ {factor:.0}× cheaper per event than {}: berth {b:.3} µs vs {o:.3} µs per event → {ratio}",
                        w.name(),
                        other.name()
                    ),
                ));
            }
        }
        // Unaudited slowdown.
        if let (Some(b), Some(o)) = (
            self.time(Workload::Unaudited, Contender::BerthEvents),
            self.time(Workload::Unaudited, Contender::Off),
        ) {
            let slowdown = b / o - 1.0;
            out.push((
                verdict(slowdown < 0.05),
                format!(
                    "unaudited work slowed < 5% while berth's events rules are loaded for another cgroup: {:+.1}% ({} vs {} off)",
                    slowdown * 100.0,
                    ms(b),
                    ms(o)
                ),
            ));
        }
        // Every event delivered or counted as lost.
        if !accounts.is_empty() {
            let bad: Vec<String> = accounts
                .iter()
                .enumerate()
                .filter(|(_, a)| a.unaccounted() != Some(0))
                .map(|(i, a)| {
                    format!(
                        "round {}: {}",
                        i + 1,
                        a.unaccounted().map_or("?".to_owned(), |u| u.to_string())
                    )
                })
                .collect();
            let produced: u64 = accounts.iter().filter_map(|a| a.produced).sum();
            let delivered: u64 = accounts.iter().map(|a| a.delivered).sum();
            let lost: u64 = accounts.iter().map(|a| a.gap_lost).sum();
            out.push((
                verdict(bad.is_empty()),
                format!(
                    "every event delivered or counted as lost (loop, events mode, {} runs): produced {}, delivered {}, lost {}{}",
                    accounts.len(),
                    thousands(produced as f64),
                    thousands(delivered as f64),
                    thousands(lost as f64),
                    if bad.is_empty() {
                        ", unaccounted 0 in every run".to_owned()
                    } else {
                        format!(", unaccounted: {}", bad.join(", "))
                    }
                ),
            ));
        }
        out
    }

    pub(super) fn render(&self, took: Duration) -> String {
        let a = self.args;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nSyscall auditing overhead: workloads run by a worker process inside a cgroup of \
             their own (the audited \"container\"), timed inside the worker; every contender is \
             attached for that cgroup only. Medians of {} interleaved rounds (each round: every \
             contender once, in rotating order, on every workload); the worker runs on {}.",
            a.rounds,
            match a.worker_cpu.as_str() {
                "all" => "any CPU (unpinned)".to_owned(),
                cpu => format!("one CPU (--worker-cpu {cpu})"),
            }
        );
        let env: Vec<String> = self
            .environment
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(out, "{}", env.join("; "));
        let _ = writeln!(
            out,
            "\ncommand: {}",
            std::env::args().collect::<Vec<_>>().join(" ")
        );
        let _ = writeln!(out, "\ncontenders:");
        let _ = writeln!(
            out,
            "- off: nothing attached (berth's agent running, nothing selected, no tracepoint attached)"
        );
        let tps = |c: Contender| {
            self.attached
                .get(&c)
                .map_or("-".to_owned(), |t| t.join(", "))
        };
        let _ = writeln!(
            out,
            "- berth counts: the cgroup selected by `{{syscalls: [\"*\"], action: count}}`; attached: {}",
            tps(Contender::BerthCounts)
        );
        let _ = writeln!(
            out,
            "- berth events: the cgroup selected by `{{syscalls: [execve, openat, connect], action: record}}` (path/argv/sockaddr and return value), every record delivered to {}; attached: {}",
            match a.reader {
                super::Reader::File => "the agent's --events-file",
                super::Reader::Follow => "a `berth events --follow` reader (to a file)",
            },
            tps(Contender::BerthEvents)
        );
        let _ = writeln!(
            out,
            "- bpftrace counter: `tracepoint:raw_syscalls:sys_enter /cgroup == cgroupid(CG)/ {{ @[args->id] = count(); }}`"
        );
        let _ = writeln!(
            out,
            "- bpftrace printf: `tracepoint:syscalls:sys_enter_{{openat,execve,connect}} /cgroup == cgroupid(CG)/ {{ printf(...) }}`, `-o FILE`"
        );
        let _ = writeln!(
            out,
            "- strace -f: `strace -f -e trace=openat,execve,connect -o FILE -p WORKER` (attached before the work starts)"
        );
        let _ = writeln!(
            out,
            "- auditd: `auditctl -a always,exit -F arch=b64 -S openat -S execve -S connect -k berthbench` (machine-wide: auditd has no cgroup filter), backlog limit 8192"
        );
        let _ = writeln!(
            out,
            "\ncolumns: overhead = median − off's median; µs per call = overhead per syscall the \
             workload makes (counting contenders, and the unaudited workload) or per event recorded \
             (recording contenders); spread = (max − min) / 2 over rounds, as % of the median; \
             worker CPU = user + system time of the worker and its children during the work \
             (in-kernel tracing programs run in the caller and count here; vs off's); tool CPU = \
             CPU time of the contender's own processes from the start of the work until they had \
             dealt with its events (berth's agent, bpftrace, strace, auditd + kauditd); CPU µs \
             per call = (worker CPU − off's + tool CPU) per syscall or event, the cost in CPU \
             time wherever it is paid; events \
             seen = syscall records berth delivered, lines bpftrace printed, calls strace printed."
        );
        let mut footnotes = Vec::new();
        for &w in self.workloads {
            self.table(&mut out, w, &mut footnotes);
        }
        let accounts = self.delivery(&mut out);
        if !accounts.is_empty()
            && let Some(cell) = self.cell(Workload::Loop, Contender::BerthEvents)
        {
            let rates: Vec<f64> = cell
                .samples
                .iter()
                .filter_map(|s| s.account.as_ref().map(|a| a.delivered as f64 / s.secs))
                .collect();
            let sustained: Vec<f64> = cell
                .samples
                .iter()
                .filter_map(|s| {
                    let a = s.account.as_ref()?;
                    Some(a.delivered as f64 / a.stream_s?)
                })
                .collect();
            let clean = accounts.iter().all(|a| a.unaccounted() == Some(0));
            let lossless = accounts.iter().all(|a| a.gap_lost == 0);
            let _ = writeln!(
                out,
                "\nberth streamed {} events/s per CPU (median; the worker is single-threaded: delivered ÷ workload time), {} events/s to the last line written; {}{}.",
                median(rates).map_or("-".to_owned(), thousands),
                median(sustained).map_or("-".to_owned(), thousands),
                if lossless {
                    "with no loss"
                } else {
                    "with loss (every lost record counted in gap records)"
                },
                if clean {
                    ", zero unaccounted"
                } else {
                    ", SOME EVENTS UNACCOUNTED"
                },
            );
        }
        if !footnotes.is_empty() {
            out.push('\n');
            for (i, note) in footnotes.iter().enumerate() {
                let _ = writeln!(out, "[{}] {note}", i + 1);
            }
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in self.notes {
                let _ = writeln!(out, "note: {n}");
            }
        }
        let goals = self.goals(&accounts);
        if !goals.is_empty() {
            out.push_str("\ngoals:\n");
        }
        for (v, text) in goals {
            let _ = writeln!(out, "  {v:<7} {text}");
        }
        let _ = writeln!(
            out,
            "\nwhole run: {:.1} min (setup, warm-up, all measurements, cleanup)",
            took.as_secs_f64() / 60.0
        );
        out
    }
}
