//! Charts as inline SVG, drawn by the daemon (no script, no library).
//!
//! A chart never draws more than [`MAX_POINTS`] points, however long the
//! history: beyond that the series is cut into that many equal spans of
//! time and each span draws its largest value (a spike stays visible; a
//! size chart shows each span's peak). Marks (failed runs) are bounded the
//! same way. The text in a chart (titles, tooltips) goes through maud like
//! everything else, so it is escaped.

use maud::{html, Markup};

/// Points one chart draws at most.
pub const MAX_POINTS: usize = 120;

const W: f64 = 480.0;
const H: f64 = 150.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 22.0;

/// One value at a time (seconds since the epoch).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub t: i64,
    pub v: f64,
}

/// `samples` (oldest first) with at most `max` points: equal spans of time,
/// each drawn as its largest value at the time of that value.
pub fn downsample(samples: &[Sample], max: usize) -> Vec<Sample> {
    if samples.len() <= max || max == 0 {
        return samples.to_vec();
    }
    let (t0, t1) = (samples[0].t, samples[samples.len() - 1].t);
    let span = (t1 - t0).max(1) as f64;
    let mut out: Vec<Option<Sample>> = vec![None; max];
    for s in samples {
        let i = (((s.t - t0) as f64 / span) * max as f64) as usize;
        let slot = &mut out[i.min(max - 1)];
        if slot.is_none_or(|b| s.v > b.v) {
            *slot = Some(*s);
        }
    }
    out.into_iter().flatten().collect()
}

/// `1.5 GiB`, as the commands print sizes.
pub use crate::progress::human_bytes as bytes;

/// How a value is written on the axis and in tooltips.
#[derive(Clone, Copy)]
pub enum Unit {
    Bytes,
    Seconds,
}

impl Unit {
    pub fn show(self, v: f64) -> String {
        match self {
            Unit::Bytes => bytes(v.max(0.0) as u64),
            Unit::Seconds => {
                if v < 120.0 {
                    format!("{v:.1} s")
                } else if v < 7200.0 {
                    format!("{:.1} min", v / 60.0)
                } else {
                    format!("{:.1} h", v / 3600.0)
                }
            }
        }
    }
}

/// A line chart of `samples` (oldest first) with red marks at `marks`
/// (times of failures); `label` names it for screen readers and tooltips,
/// `day` writes a time for the axis.
pub fn line(
    label: &str,
    unit: Unit,
    samples: &[Sample],
    marks: &[i64],
    day: &dyn Fn(i64) -> String,
) -> Markup {
    let pts = downsample(samples, MAX_POINTS);
    let mut ts: Vec<i64> = pts
        .iter()
        .map(|s| s.t)
        .chain(marks.iter().copied())
        .collect();
    ts.sort_unstable();
    let (Some(&t0), Some(&t1)) = (ts.first(), ts.last()) else {
        return html! { p.empty { "No runs yet." } };
    };
    let vmax = pts.iter().map(|s| s.v).fold(0.0_f64, f64::max);
    let vtop = if vmax > 0.0 { vmax * 1.1 } else { 1.0 };
    let x = |t: i64| {
        if t1 == t0 {
            LEFT + (W - LEFT - RIGHT) / 2.0
        } else {
            LEFT + (t - t0) as f64 / (t1 - t0) as f64 * (W - LEFT - RIGHT)
        }
    };
    let y = |v: f64| TOP + (1.0 - v / vtop) * (H - TOP - BOTTOM);
    let poly: String = pts
        .iter()
        .map(|s| format!("{:.1},{:.1}", x(s.t), y(s.v)))
        .collect::<Vec<_>>()
        .join(" ");
    // Failure marks, one per pixel column at most.
    let mut mark_x: Vec<i64> = marks.iter().map(|t| x(*t).round() as i64).collect();
    mark_x.sort_unstable();
    mark_x.dedup();
    mark_x.truncate(MAX_POINTS * 2);
    let base = H - BOTTOM;
    html! {
        svg.chart viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(label) {
            title { (label) }
            line.axis x1=(LEFT) y1=(base) x2=(W - RIGHT) y2=(base) {}
            line.axis x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(base) {}
            text.tick x=(LEFT - 4.0) y=(TOP + 8.0) text-anchor="end" { (unit.show(vtop)) }
            text.tick x=(LEFT - 4.0) y=(base) text-anchor="end" { "0" }
            text.tick x=(LEFT) y=(H - 6.0) { (day(t0)) }
            @if t1 != t0 {
                text.tick x=(W - RIGHT) y=(H - 6.0) text-anchor="end" { (day(t1)) }
            }
            @for mx in &mark_x {
                line.fail x1=(mx) y1=(TOP) x2=(mx) y2=(base) {}
            }
            @if pts.len() > 1 {
                polyline.series points=(poly) {}
            }
            @for s in &pts {
                circle.dot cx=(format!("{:.1}", x(s.t))) cy=(format!("{:.1}", y(s.v))) r="2.5" {
                    title { (day(s.t)) ": " (unit.show(s.v)) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsampling_keeps_each_spans_peak_and_bounds_the_points() {
        let s: Vec<Sample> = (0..1000)
            .map(|i| Sample {
                t: i * 86_400,
                v: if i == 500 { 1e9 } else { i as f64 },
            })
            .collect();
        let d = downsample(&s, 100);
        assert!(d.len() <= 100 && d.len() > 90, "{}", d.len());
        assert!(d.iter().any(|p| p.v == 1e9), "the spike stays");
        assert!(d.windows(2).all(|w| w[0].t < w[1].t), "in time order");
        assert_eq!(downsample(&s[..10], 100), s[..10].to_vec());
    }

    #[test]
    fn a_chart_draws_at_most_max_points() {
        let s: Vec<Sample> = (0..5000).map(|i| Sample { t: i * 60, v: 1.0 }).collect();
        let marks: Vec<i64> = (0..5000).map(|i| i * 60).collect();
        let svg = line("x", Unit::Seconds, &s, &marks, &|t| t.to_string()).into_string();
        assert!(svg.matches("<circle").count() <= MAX_POINTS);
        assert!(svg.matches("class=\"fail\"").count() <= MAX_POINTS * 2);
    }
}
