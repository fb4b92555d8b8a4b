//! `shmbus bench --plot FILE`: the latency cases as percentile curves, in an SVG for the
//! README.
//!
//! One panel per latency group (a case, its limit and what it was interleaved with), one
//! polyline per series: x is the percentile on a "nines" scale (x = -log10(1 - p), so 90, 99,
//! 99.9 and 99.99 are evenly spaced, and the max has a column of its own past them), y the
//! round trip in nanoseconds on a log scale. The SVG is written by hand, as the JSON is: every
//! piece of free text (the CPU model, the command line, the case names) goes through [`esc`].
//! This module only draws what the harness measured: it never measures, and it never changes
//! what the table or the JSON lines say.

use std::fmt::Write as _;

use super::report::{Machine, RunInfo};
use crate::stats::{fmt_ns, Latency, CURVE_QUANTILES};

/// What a series is to its group, which sets how its line is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A shmbus case: a solid line.
    Case,
    /// The group's limit (the simplest code doing the same job): a dashed line.
    Limit,
    /// What a user might use instead, or another bare primitive: a dotted line.
    Alternative,
}

/// One measured series of a group.
pub struct Series {
    pub name: &'static str,
    pub role: Role,
    pub fig: Latency,
}

/// One latency group, measured interleaved: one panel of the plot.
pub struct Panel {
    pub title: &'static str,
    pub series: Vec<Series>,
}

/// The SVG's width; its height grows with the header and the number of panels.
const WIDTH: f64 = 960.0;
/// Where a panel's plot area starts and ends, across.
const PLOT_LEFT: f64 = 80.0;
const PLOT_RIGHT: f64 = 620.0;
/// Where the legend of a panel starts, across.
const LEGEND_LEFT: f64 = 645.0;
/// A panel, down: its title, then the plot area, then the tick labels and the axis title.
const PANEL_TITLE_H: f64 = 36.0;
const PLOT_H: f64 = 240.0;
/// The margin inside the plot area above the highest mark and below the lowest.
const Y_PAD: f64 = 8.0;
const PANEL_H: f64 = PANEL_TITLE_H + PLOT_H + 50.0;
/// A line of the header, down.
const LINE_H: f64 = 16.0;
/// The longest header line, in characters, before it is wrapped (about 5.5 px a character).
const WRAP: usize = 155;
/// The least distance between two labels of the y axis.
const LABEL_GAP: f64 = 20.0;

/// Where the max is drawn on the nines axis: one decade past p99.99, in a column of its own
/// (its true percentile depends on the number of samples).
const X_MAX: f64 = 5.0;
/// The nines axis's ends: p50 and the max column, with a margin so that no mark sits on the
/// frame.
const X_LO: f64 = std::f64::consts::LOG10_2 - 0.15;
const X_HI: f64 = X_MAX + 0.15;
/// The labelled ticks of the nines axis.
const X_TICKS: [(f64, &str); 6] = [
    (std::f64::consts::LOG10_2, "50"),
    (1.0, "90"),
    (2.0, "99"),
    (3.0, "99.9"),
    (4.0, "99.99"),
    (X_MAX, "max"),
];

/// Okabe-Ito colours: told apart by colour-blind readers, and in grey by the line styles.
const COLOURS: [&str; 7] = [
    "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000",
];

/// The SVG of `panels`, titled with the machine, the command and the date of the run. With no
/// panel (no latency case ran), a valid SVG that says so and why (`notes`).
pub fn svg(machine: &Machine, run: &RunInfo, notes: &[String], panels: &[Panel]) -> String {
    let mut header = Vec::new();
    header.extend(wrap(&format!("machine: {}", machine.describe()), WRAP));
    header.extend(wrap(&format!("command: {}", run.command), WRAP));
    header.extend(wrap(
        &format!(
            "{} round trips per case after {} warm-up, in {} interleaved blocks; full round trips, \
             not halved, each including ~{} ns of clock reads; both axes logarithmic; a hollow dot: \
             the max, in a column of its own",
            run.round_trips, run.warm_up, run.latency_blocks, run.clock_ns
        ),
        WRAP,
    ));
    for note in notes {
        header.extend(wrap(note, WRAP));
    }
    let header_h = 40.0 + LINE_H * header.len() as f64 + 10.0;
    let body_h = if panels.is_empty() {
        40.0
    } else {
        PANEL_H * panels.len() as f64
    };
    let height = header_h + body_h;

    let title = format!(
        "shmbus bench: round trip by percentile, {}",
        utc_date(run.unix_time)
    );
    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, "<title>{}</title>", esc(&title));
    // A background of its own: the README may be read on a dark page.
    let _ = writeln!(
        s,
        r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="20" y="28" font-size="18" font-weight="bold">{}</text>"#,
        esc(&title)
    );
    for (k, line) in header.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<text x="20" y="{}" fill="#444">{}</text>"##,
            50.0 + LINE_H * k as f64,
            esc(line)
        );
    }
    if panels.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="20" y="{}" font-size="14">No latency case was measured in this run.</text>"#,
            header_h + 20.0
        );
    }
    for (k, panel) in panels.iter().enumerate() {
        draw_panel(&mut s, panel, header_h + PANEL_H * k as f64);
    }
    s.push_str("</svg>\n");
    s
}

/// One panel, its top at `top`.
fn draw_panel(s: &mut String, panel: &Panel, top: f64) {
    let plot_top = top + PANEL_TITLE_H;
    let plot_bottom = plot_top + PLOT_H;
    let curves: Vec<Vec<(f64, u64)>> = panel.series.iter().map(|x| curve(&x.fig)).collect();
    let (lo, hi) = y_range(
        curves
            .iter()
            .flatten()
            .map(|p| p.1)
            .chain(panel.series.iter().map(|x| x.fig.max)),
    );
    let (lo_v, hi_v) = ((lo as f64).log10(), (hi as f64).log10());
    let px = |x: f64| PLOT_LEFT + (x - X_LO) / (X_HI - X_LO) * (PLOT_RIGHT - PLOT_LEFT);
    // A margin inside the frame, so that no mark sits on it.
    let py = |ns: u64| {
        let v = (ns.max(1) as f64).log10();
        plot_bottom - Y_PAD - (v - lo_v) / (hi_v - lo_v) * (PLOT_H - 2.0 * Y_PAD)
    };

    let _ = writeln!(s, r#"<g class="panel">"#);
    let _ = writeln!(
        s,
        r#"<text x="20" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        top + 22.0,
        esc(panel.title)
    );

    // The grid and the ticks: every power of ten and both ends labelled; 2 and 5 times a power
    // of ten as fainter lines, labelled too when the panel spans two decades or fewer.
    let _ = writeln!(s, r##"<g class="grid" stroke="#ddd" stroke-width="1">"##);
    for &(x, _) in &X_TICKS {
        let _ = writeln!(
            s,
            r#"<line x1="{0:.1}" y1="{plot_top:.1}" x2="{0:.1}" y2="{plot_bottom:.1}"/>"#,
            px(x)
        );
    }
    let mut majors = Vec::new();
    let mut minors = Vec::new();
    for ns in steps().skip_while(|&ns| ns < lo).take_while(|&ns| ns <= hi) {
        let major = ns == 10u64.pow(ns.ilog10());
        let y = py(ns);
        let stroke = if major { "" } else { r##" stroke="#eee""## };
        let _ = writeln!(
            s,
            r#"<line x1="{PLOT_LEFT}" y1="{y:.1}" x2="{PLOT_RIGHT}" y2="{y:.1}"{stroke}/>"#
        );
        if major {
            majors.push((y, ns));
        } else if ns == lo || ns == hi || hi_v - lo_v <= 2.0 {
            minors.push((y, ns));
        }
    }
    // The minor labels that do not crowd a label already placed.
    let mut y_labels = majors;
    for (y, ns) in minors {
        if y_labels.iter().all(|l| (l.0 - y).abs() >= LABEL_GAP) {
            y_labels.push((y, ns));
        }
    }
    let _ = writeln!(s, "</g>");
    let _ = writeln!(
        s,
        r##"<rect x="{PLOT_LEFT}" y="{plot_top:.1}" width="{}" height="{PLOT_H}" fill="none" stroke="#888"/>"##,
        PLOT_RIGHT - PLOT_LEFT
    );
    for (y, ns) in y_labels {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            PLOT_LEFT - 6.0,
            y + 4.0,
            esc(&tick_label(ns))
        );
    }
    for &(x, label) in &X_TICKS {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            px(x),
            plot_bottom + 16.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        (PLOT_LEFT + PLOT_RIGHT) / 2.0,
        plot_bottom + 34.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(22 {:.1}) rotate(-90)" text-anchor="middle">round trip</text>"#,
        (plot_top + plot_bottom) / 2.0
    );

    // The curves, each with a thin dotted line to its max (a hollow dot), then the legend
    // beside the plot area.
    for (k, (series, points)) in panel.series.iter().zip(&curves).enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let coords: Vec<String> = points
            .iter()
            .map(|&(x, ns)| format!("{:.1},{:.1}", px(x), py(ns)))
            .collect();
        let f = &series.fig;
        let _ = writeln!(
            s,
            r#"<polyline data-case="{}" class="{}" points="{}" fill="none" stroke="{colour}" stroke-width="2"{}><title>{}</title></polyline>"#,
            esc(series.name),
            role_name(series.role),
            coords.join(" "),
            dash(series.role),
            esc(&format!(
                "{}: p50 {}, p99 {}, p99.9 {}, max {} ({} round trips)",
                series.name,
                fmt_ns(f.p50),
                fmt_ns(f.p99),
                fmt_ns(f.p999),
                fmt_ns(f.max),
                f.count
            ))
        );
        for &(x, ns) in points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{colour}"/>"#,
                px(x),
                py(ns)
            );
        }
        let (max_x, max_y) = (px(X_MAX), py(f.max));
        if let Some(&(x, ns)) = points.last() {
            let _ = writeln!(
                s,
                r#"<line class="to-max" x1="{:.1}" y1="{:.1}" x2="{max_x:.1}" y2="{max_y:.1}" stroke="{colour}" stroke-width="1" stroke-dasharray="1 3"/>"#,
                px(x),
                py(ns)
            );
        }
        let _ = writeln!(
            s,
            r#"<circle class="max" data-case="{}" cx="{max_x:.1}" cy="{max_y:.1}" r="3.5" fill="white" stroke="{colour}" stroke-width="1.5"/>"#,
            esc(series.name)
        );
        let y = plot_top + 12.0 + 20.0 * k as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{LEGEND_LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="{colour}" stroke-width="2"{}/>"#,
            LEGEND_LEFT + 28.0,
            dash(series.role)
        );
        let role = match series.role {
            Role::Limit => " (limit)",
            Role::Case | Role::Alternative => "",
        };
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}">{}{role}, p50 {}</text>"#,
            LEGEND_LEFT + 36.0,
            y + 4.0,
            esc(series.name),
            esc(&fmt_ns(f.p50))
        );
    }
    let _ = writeln!(s, "</g>");
}

/// The fewest samples above a quantile for it to be drawn: with fewer, the point says little
/// more than the max does (with 10^4 samples, p99.99 is the largest but one).
const MIN_TAIL: f64 = 10.0;

/// The points of one curve, as (x on the nines axis, ns): each quantile of
/// [`CURVE_QUANTILES`] with at least [`MIN_TAIL`] samples above it (p99.9 needs 10^4
/// samples, p99.99 10^5). The max is not one of them: it is drawn apart, in its column.
fn curve(fig: &Latency) -> Vec<(f64, u64)> {
    CURVE_QUANTILES
        .iter()
        .zip(fig.curve)
        .filter(|&(&q, _)| fig.count as f64 >= (MIN_TAIL / (1.0 - q)).round())
        .map(|(&q, ns)| (-(1.0 - q).log10(), ns))
        .collect()
}

/// 1, 2, 5, 10, 20, 50, ...: the steps of a log axis's grid, up to `u64::MAX`.
fn steps() -> impl Iterator<Item = u64> {
    std::iter::successors(Some(1u64), |&s| {
        if s / 10u64.pow(s.ilog10()) == 2 {
            (s / 2).checked_mul(5)
        } else {
            s.checked_mul(2)
        }
    })
}

/// The y axis's ends: the largest step at or below the least of `values`, the smallest at or
/// above the greatest, never the same.
fn y_range(values: impl Iterator<Item = u64>) -> (u64, u64) {
    let (mut least, mut greatest) = (u64::MAX, 1);
    for v in values {
        least = least.min(v.max(1));
        greatest = greatest.max(v);
    }
    least = least.min(greatest);
    let lo = steps().take_while(|&s| s <= least).last().unwrap_or(1);
    let hi = steps().find(|&s| s >= greatest && s > lo).unwrap_or(lo * 2);
    (lo, hi)
}

/// A tick's label: `200 ns`, `1 µs`, `50 ms`.
fn tick_label(ns: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "µs"),
        (1, "ns"),
    ];
    let (scale, unit) = UNITS
        .iter()
        .copied()
        .find(|&(scale, _)| ns >= scale && ns % scale == 0)
        .unwrap_or((1, "ns"));
    format!("{} {unit}", ns / scale)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Case => "case",
        Role::Limit => "limit",
        Role::Alternative => "alternative",
    }
}

/// The stroke pattern of a role, as an attribute.
fn dash(role: Role) -> &'static str {
    match role {
        Role::Case => "",
        Role::Limit => r#" stroke-dasharray="7 4""#,
        Role::Alternative => r#" stroke-dasharray="2 3""#,
    }
}

/// `text` in lines of at most `max` characters: broken after a `;` where that is enough,
/// else at spaces (a longer word stays whole).
fn wrap(text: &str, max: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for clause in text.split_inclusive("; ") {
        let clause = clause.trim_end();
        if !line.is_empty() && line.chars().count() + 1 + clause.chars().count() > max {
            lines.push(std::mem::take(&mut line));
        }
        for word in clause.split_whitespace() {
            if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > max {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// `unix_time` as `2026-11-25 03:58 UTC`.
fn utc_date(unix_time: u64) -> String {
    let days = unix_time / 86_400;
    let secs = unix_time % 86_400;
    // Days since 1970-01-01 to a civil date (proleptic Gregorian), counting in 400-year eras
    // of 146097 days that start on 0000-03-01, so that the leap day ends a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3_600,
        secs % 3_600 / 60
    )
}

/// `text` for XML, in an element or in a quoted attribute.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Not allowed in XML 1.0 at all, even escaped: dropped.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::affinity::CpuPair;
    use crate::stats;

    fn machine(cpu_model: &str) -> Machine {
        Machine {
            nproc: 2,
            cpu_model: cpu_model.to_string(),
            kernel: "6.1.0".to_string(),
            cpus: Some(CpuPair {
                parent: 0,
                child: 1,
            }),
            smt_siblings: Some(false),
            load: Some(0.5),
        }
    }

    fn run_info(command: &str) -> RunInfo {
        RunInfo {
            command: command.to_string(),
            unix_time: 1_700_000_000,
            round_trips: 10_000,
            warm_up: 1_000,
            messages: 2_000_000,
            latency_blocks: 10,
            stream_blocks: 10,
            clock_ns: 40,
            stream_capacity: 1024,
        }
    }

    /// The figures of `n` samples spread from `low` to about 100 times `low`, with a few
    /// outliers at 1000 times.
    fn fig(low: u64, n: u64) -> Latency {
        let mut hist = stats::histogram().unwrap();
        for i in 0..n {
            let ns = if i % 997 == 0 {
                low * 1000
            } else {
                low + low * (i % 100)
            };
            hist.record(ns).unwrap();
        }
        Latency::of(&hist)
    }

    fn panels(n: u64) -> Vec<Panel> {
        vec![
            Panel {
                title: "polling, 8 bytes",
                series: vec![
                    Series {
                        name: "shm-poll-8B",
                        role: Role::Case,
                        fig: fig(150, n),
                    },
                    Series {
                        name: "raw-cacheline",
                        role: Role::Limit,
                        fig: fig(120, n),
                    },
                ],
            },
            Panel {
                title: "blocking <futex> & \"the kernel's\"",
                series: vec![
                    Series {
                        name: "shm-futex-64B",
                        role: Role::Case,
                        fig: fig(5_000, n),
                    },
                    Series {
                        name: "raw-futex",
                        role: Role::Limit,
                        fig: fig(4_000, n),
                    },
                    Series {
                        name: "pipe-64B",
                        role: Role::Alternative,
                        fig: fig(9_000, n),
                    },
                ],
            },
        ]
    }

    /// The view box's width and height.
    fn view_box(doc: &roxmltree::Document) -> (f64, f64) {
        let vb: Vec<f64> = doc
            .root_element()
            .attribute("viewBox")
            .unwrap()
            .split(' ')
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(vb[..2], [0.0, 0.0]);
        (vb[2], vb[3])
    }

    /// Every polyline's points, which must be finite and inside the view box.
    fn polylines<'a>(doc: &'a roxmltree::Document) -> Vec<(&'a str, Vec<(f64, f64)>)> {
        let (w, h) = view_box(doc);
        doc.descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .map(|n| {
                let points: Vec<(f64, f64)> = n
                    .attribute("points")
                    .unwrap()
                    .split(' ')
                    .map(|p| {
                        let (x, y) = p.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect();
                for &(x, y) in &points {
                    assert!(x.is_finite() && y.is_finite(), "{x},{y}");
                    assert!((0.0..=w).contains(&x) && (0.0..=h).contains(&y), "{x},{y}");
                }
                (n.attribute("data-case").unwrap(), points)
            })
            .collect()
    }

    #[test]
    fn parses_as_svg_with_one_polyline_per_series() {
        let text = svg(
            &machine("Test CPU"),
            &run_info("shmbus bench"),
            &[],
            &panels(100_000),
        );
        let doc = roxmltree::Document::parse(&text).unwrap();
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(
            root.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
        let lines = polylines(&doc);
        let names: Vec<&str> = lines.iter().map(|l| l.0).collect();
        assert_eq!(
            names,
            [
                "shm-poll-8B",
                "raw-cacheline",
                "shm-futex-64B",
                "raw-futex",
                "pipe-64B"
            ]
        );
        for (name, points) in &lines {
            // p50 to p99.99: 10^5 samples resolve every quantile.
            assert_eq!(points.len(), 6, "{name}");
            // Left to right, and never down: a percentile curve.
            for w in points.windows(2) {
                assert!(w[0].0 < w[1].0 && w[0].1 >= w[1].1, "{name}: {w:?}");
            }
        }
        // Each max, a hollow dot right of its curve and not below it.
        let (w, h) = view_box(&doc);
        let maxes: Vec<_> = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("max"))
            .collect();
        assert_eq!(maxes.len(), lines.len());
        for (dot, (name, points)) in maxes.iter().zip(&lines) {
            assert_eq!(dot.attribute("data-case"), Some(*name));
            let x: f64 = dot.attribute("cx").unwrap().parse().unwrap();
            let y: f64 = dot.attribute("cy").unwrap().parse().unwrap();
            assert!(x > points[5].0 && x < w, "{name}: {x}");
            assert!(y <= points[5].1 && y > 0.0 && y < h, "{name}: {y}");
        }
        // The legend names each series with its p50.
        let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
        assert!(texts.iter().any(|t| t.starts_with("shm-poll-8B, p50 ")));
        assert!(texts
            .iter()
            .any(|t| t.starts_with("raw-futex (limit), p50 ")));
        assert!(texts.iter().any(|t| t.contains("2023-11-14 22:13 UTC")));
    }

    #[test]
    fn escapes_free_text() {
        let cpu = "Fast & <Cheap> \"CPU\" 'x'\u{1}";
        let command = "shmbus bench --only '<a&b>'";
        let text = svg(&machine(cpu), &run_info(command), &[], &panels(1_000));
        let doc = roxmltree::Document::parse(&text).unwrap();
        let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
        assert!(texts
            .iter()
            .any(|t| t.contains("Fast & <Cheap> \"CPU\" 'x'")));
        assert!(texts.iter().any(|t| t.contains(command)));
        assert!(texts.contains(&"blocking <futex> & \"the kernel's\""));
    }

    #[test]
    fn drops_quantiles_the_samples_do_not_resolve() {
        for (samples, points) in [(150, 3), (10_000, 5)] {
            let text = svg(&machine("cpu"), &run_info("c"), &[], &panels(samples));
            let doc = roxmltree::Document::parse(&text).unwrap();
            for (name, line) in polylines(&doc) {
                // 150: p50, p75 and p90 (15 samples above it). 10^4: up to p99.9.
                assert_eq!(line.len(), points, "{name}, {samples} samples");
            }
        }
    }

    #[test]
    fn no_panel_is_still_an_svg() {
        let notes = ["the spinning cases were skipped".to_string()];
        let text = svg(&machine("cpu"), &run_info("c"), &notes, &[]);
        let doc = roxmltree::Document::parse(&text).unwrap();
        assert!(polylines(&doc).is_empty());
        let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
        assert!(texts.contains(&"the spinning cases were skipped"));
        assert!(texts.contains(&"No latency case was measured in this run."));
    }

    #[test]
    fn axes() {
        let first: Vec<u64> = steps().take(7).collect();
        assert_eq!(first, [1, 2, 5, 10, 20, 50, 100]);
        assert_eq!(y_range([150, 2_000].into_iter()), (100, 2_000));
        assert_eq!(y_range([100, 2_100].into_iter()), (100, 5_000));
        assert_eq!(y_range([100].into_iter()), (100, 200));
        assert_eq!(
            y_range([0, 60_000_000_000].into_iter()),
            (1, 100_000_000_000)
        );
        assert_eq!(y_range(std::iter::empty()), (1, 2));
        assert_eq!(tick_label(200), "200 ns");
        assert_eq!(tick_label(1_000), "1 µs");
        assert_eq!(tick_label(50_000_000), "50 ms");
        assert_eq!(tick_label(2_000_000_000), "2 s");
    }

    #[test]
    fn dates_and_wrapping() {
        assert_eq!(utc_date(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14 22:13 UTC");
        assert_eq!(wrap("aa bb cc", 5), ["aa bb", "cc"]);
        assert_eq!(wrap("aa; bb cc", 6), ["aa;", "bb cc"]);
        assert_eq!(wrap("aa; bb; cc dd ee", 9), ["aa; bb;", "cc dd ee"]);
        assert_eq!(wrap("aaaaaaa b", 3), ["aaaaaaa", "b"]);
        assert!(wrap("", 5).is_empty());
    }
}
