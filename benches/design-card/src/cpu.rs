//! A criterion measurement of the process's CPU time (all threads), for benches run on a
//! shared machine: wall time there mostly measures the other tenants. CPU time also counts
//! the SDK's export threads (batch span processor, periodic metric reader), which wall time
//! on the calling thread would only see as waiting. Set `DESIGN_CARD_WALL=1` to measure
//! wall time instead (on an idle machine the two agree for single-threaded cases).

use criterion::measurement::{Measurement, ValueFormatter, WallTime};

/// `CLOCK_PROCESS_CPUTIME_ID`, in nanoseconds.
pub struct ProcessCpu;

fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for ProcessCpu {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        now_ns()
    }
    fn end(&self, start: u64) -> u64 {
        now_ns() - start
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Nanoseconds, like wall time: the same units and scaling.
        WallTime.formatter()
    }
}

/// Whether `DESIGN_CARD_WALL` asks for wall time.
pub fn wall() -> bool {
    std::env::var_os("DESIGN_CARD_WALL").is_some_and(|v| v != "0")
}

/// Process CPU time now, in nanoseconds.
pub fn now() -> u64 {
    now_ns()
}

/// One case of [`interleave`]: a name and the work on one input; it returns the input
/// when it must be dropped outside the measurement.
pub type Case<'a, I> = (&'static str, Box<dyn FnMut(I) -> Option<I> + 'a>);

/// The cases measured in turn, round after round, each for about `budget_ns` of CPU per
/// round, so that a change in the machine's load between cases hits all of them alike.
/// Returns the CPU nanoseconds per call of each case, per round.
pub fn interleave<I>(rounds: usize, budget_ns: u64, setup: impl Fn() -> I, cases: &mut [Case<'_, I>]) -> Vec<Vec<f64>> {
    let mut out = vec![Vec::with_capacity(rounds); cases.len()];
    for _ in 0..rounds {
        for (i, (_, f)) in cases.iter_mut().enumerate() {
            let (mut spent, mut calls) = (0u64, 0u64);
            while spent < budget_ns {
                let input = setup();
                let t = now_ns();
                let back = f(input);
                spent += now_ns() - t;
                drop(back);
                calls += 1;
            }
            out[i].push(spent as f64 / calls as f64);
        }
    }
    out
}

/// `DESIGN_CARD_CASE=<name> DESIGN_CARD_ITERS=<n>`: the case to run alone, `n` times, with
/// no timing, for an instruction count under `valgrind --tool=callgrind` (`callgrind.sh`
/// runs it twice with different `n`, so that setup cancels out).
pub fn single() -> Option<(String, usize)> {
    let name = std::env::var("DESIGN_CARD_CASE").ok()?;
    let iters = std::env::var("DESIGN_CARD_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    Some((name, iters))
}

/// Runs the case named `name` `iters` times (see [`single`]); panics on an unknown name.
pub fn run_single<I>(name: &str, iters: usize, setup: impl Fn() -> I, cases: &mut [Case<'_, I>]) {
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let (_, f) = cases.iter_mut().find(|c| c.0 == name).unwrap_or_else(|| panic!("no case {name:?} in {names:?}"));
    for _ in 0..iters {
        drop(f(setup()));
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Prints the median CPU ns per element of each case and, per case, the median (min–max)
/// over rounds of its ratio to the first case in the same round.
pub fn print_interleaved(title: &str, names: &[&str], per_call: &[Vec<f64>], elements: f64) {
    eprintln!("\n{title} (CPU time, {} interleaved rounds):", per_call[0].len());
    eprintln!("{:<26} {:>14} {:>26}", "case", "ns/element", "× first case: median (min–max)");
    for (name, v) in names.iter().zip(per_call) {
        let mut ratios: Vec<f64> = v.iter().zip(&per_call[0]).map(|(a, b)| a / b).collect();
        let (lo, hi) = ratios.iter().fold((f64::MAX, 0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        let mut per = v.clone();
        eprintln!(
            "{:<26} {:>14.0} {:>12.2} ({:.2}–{:.2})",
            name,
            median(&mut per) / elements,
            median(&mut ratios),
            lo,
            hi
        );
    }
    eprintln!();
}
