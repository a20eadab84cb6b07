//! The report's drawings. Diagrams are geometry (boxes, lines, labels) that the template writes
//! out as SVG elements, escaped like all its text; the latency CDFs are drawn by plotters' SVG
//! backend. Every drawing has a viewBox and scales to the page's width.

use std::collections::{BTreeMap, HashMap};

use plotters::prelude::*;

use crate::{
    correlate::{HopTiming, NatEntry, Stop},
    model::{Direction, Hook, Place},
};

/// A drawing: its size (the viewBox) and what is in it.
#[derive(Debug, Default)]
pub(crate) struct Diagram {
    pub width: u32,
    pub height: u32,
    pub boxes: Vec<BoxShape>,
    pub lines: Vec<LineShape>,
    pub labels: Vec<Label>,
}

#[derive(Debug)]
pub(crate) struct BoxShape {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
    /// A CSS class: `ns`, `hook`, `drop`.
    pub class: &'static str,
}

#[derive(Debug)]
pub(crate) struct LineShape {
    pub x1: u32,
    pub y1: u32,
    pub x2: u32,
    pub y2: u32,
    pub class: &'static str,
}

#[derive(Debug)]
pub(crate) struct Label {
    pub x: u32,
    pub y: u32,
    pub text: String,
    /// A CSS class: `hop`, `small`, `nat`, `drop`, `ns`.
    pub class: &'static str,
}

const ROW: u32 = 64;
const BOX_W: u32 = 300;
const BOX_H: u32 = 40;

/// A leg's hop chain, top to bottom: one box per hook (its label and direction, packets and
/// mean delay), an arrow to the next, the NAT step written beside the arrow it happened on, and
/// stops in red beside the hook they happened after.
pub(crate) fn chain(hops: &[HopTiming], nat: &[NatEntry], stops: &[&Stop], back: bool) -> Diagram {
    // Room for the NAT steps beside the arrows, and for the stops beside the boxes.
    let width = if stops.is_empty() { 520 } else { 640 };
    let mut d = Diagram {
        width,
        ..Diagram::default()
    };
    let x = 10;
    for (i, h) in hops.iter().enumerate() {
        let y = 10 + i as u32 * ROW;
        d.boxes.push(BoxShape {
            x,
            y,
            w: BOX_W,
            h: BOX_H,
            class: "hook",
        });
        d.labels.push(Label {
            x: x + 10,
            y: y + 17,
            text: format!("{} {}", h.hook, h.dir),
            class: "hop",
        });
        let delta = if h.samples == 0 {
            "+?".to_string()
        } else {
            format!("+{:.1} µs", h.delta_us)
        };
        d.labels.push(Label {
            x: x + 10,
            y: y + 33,
            text: format!("{} packets · {delta} (mean)", h.packets),
            class: "small",
        });
        if let Some(next) = hops.get(i + 1) {
            let (y1, y2) = (y + BOX_H, y + ROW);
            d.lines.push(LineShape {
                x1: x + 40,
                y1,
                x2: x + 40,
                y2,
                class: "arrow",
            });
            let steps: Vec<&NatEntry> = nat
                .iter()
                .filter(|e| e.step.between.0 == h.hook && e.step.between.1 == next.hook)
                .collect();
            for (n, e) in steps.iter().enumerate() {
                d.labels.push(Label {
                    x: x + 55,
                    y: y1 + 16 + n as u32 * 14,
                    text: super::model::nat_what(e, back),
                    class: "nat",
                });
            }
        }
        for (n, s) in stops
            .iter()
            .filter(|s| s.after_hook == h.hook && s.after_dir == h.dir)
            .enumerate()
        {
            d.labels.push(Label {
                x: x + BOX_W + 16,
                y: y + 17 + n as u32 * 14,
                text: match (&s.reason, s.cause.is_loss()) {
                    (Some(r), true) => format!("✗ {} lost ({r})", s.count),
                    (None, true) => format!("✗ {} lost (reason unknown)", s.count),
                    _ => format!("✗ {} not seen further", s.count),
                },
                class: if s.cause.is_loss() { "drop" } else { "small" },
            });
        }
    }
    d.height = 20 + hops.len().max(1) as u32 * ROW - (ROW - BOX_H);
    d
}

/// The topology: one box per namespace, inside it one box per interface with its place and the
/// packets each direction's hook saw, and drops in red at the interface where packets stopped.
pub(crate) fn topology(
    hooks: &[Hook],
    counts: &BTreeMap<(u8, Direction), u64>,
    drops: &HashMap<(String, Direction), (u64, Vec<String>)>,
) -> Diagram {
    // Interfaces in path order (the order hooks are listed), grouped by namespace.
    let mut ifaces: Vec<(String, String, Place, Vec<&Hook>)> = Vec::new();
    for h in hooks {
        match ifaces
            .iter_mut()
            .find(|(ns, name, _, _)| *ns == h.ns_label && *name == h.ifname)
        {
            Some(e) => e.3.push(h),
            None => ifaces.push((h.ns_label.clone(), h.ifname.clone(), h.place, vec![h])),
        }
    }
    let width = if drops.is_empty() { 470 } else { 900 };
    let mut d = Diagram {
        width,
        ..Diagram::default()
    };
    let mut y = 10;
    let mut i = 0;
    while i < ifaces.len() {
        let ns = ifaces[i].0.clone();
        let group: Vec<_> = ifaces[i..].iter().take_while(|e| e.0 == ns).collect();
        let top = y;
        d.labels.push(Label {
            x: 20,
            y: y + 20,
            text: format!("namespace {ns}"),
            class: "ns",
        });
        y += 30;
        for (_, name, place, hs) in &group {
            d.boxes.push(BoxShape {
                x: 30,
                y,
                w: 420,
                h: BOX_H,
                class: "hook",
            });
            d.labels.push(Label {
                x: 40,
                y: y + 17,
                text: format!("{ns}:{name} ({})", place_name(*place)),
                class: "hop",
            });
            let per_dir: Vec<String> = hs
                .iter()
                .map(|h| {
                    let n = counts.get(&(h.slot, h.direction)).copied().unwrap_or(0);
                    format!("{}: {n} packets", h.direction)
                })
                .collect();
            d.labels.push(Label {
                x: 40,
                y: y + 33,
                text: per_dir.join(" · "),
                class: "small",
            });
            for (n, dir) in [Direction::Ingress, Direction::Egress].iter().enumerate() {
                if let Some((count, why)) = drops.get(&(format!("{ns}:{name}"), *dir)) {
                    d.labels.push(Label {
                        x: 466,
                        y: y + 17 + n as u32 * 14,
                        text: format!("✗ {count} lost after {dir}: {}", why.join(", ")),
                        class: "drop",
                    });
                }
            }
            y += ROW - 10;
        }
        d.boxes.insert(
            0,
            BoxShape {
                x: 10,
                y: top,
                w: width - 20,
                h: y - top,
                class: "ns",
            },
        );
        y += 12;
        i += group.len();
    }
    d.height = y;
    d
}

fn place_name(p: Place) -> &'static str {
    match p {
        Place::Container => "container interface",
        Place::Veth => "host veth",
        Place::Bridge => "bridge",
        Place::Uplink => "uplink",
        Place::PeerVeth => "peer's host veth",
        Place::PeerContainer => "peer's interface",
    }
}

/// Latency CDFs, one line per hop (delay after the packet's first sighting, µs), as an SVG
/// document (plotters' SVG backend) to inline.
pub(crate) fn cdf(series: &[(String, Vec<f64>)]) -> String {
    const COLOURS: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    let mut out = String::new();
    let max = series
        .iter()
        .flat_map(|(_, s)| s.last().copied())
        .fold(1.0_f64, f64::max)
        * 1.05;
    {
        let root = SVGBackend::with_string(&mut out, (640, 260)).into_drawing_area();
        let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(44)
                .build_cartesian_2d(0.0..max, 0.0..1.0)?;
            chart
                .configure_mesh()
                .x_desc("µs after the first hook")
                .y_desc("fraction of packets")
                .x_labels(6)
                .y_labels(5)
                .draw()?;
            for (n, (name, s)) in series.iter().enumerate() {
                let colour = COLOURS[n % COLOURS.len()];
                let len = s.len() as f64;
                let points = s
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (*v, (i + 1) as f64 / len));
                chart
                    .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
                    .label(name.clone())
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour));
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .border_style(BLACK)
                .background_style(WHITE.mix(0.8))
                .draw()?;
            root.present()?;
            Ok(())
        })();
        if let Err(e) = drawn {
            tracing::warn!("drawing a latency plot: {e}");
        }
    }
    // Scaled by the page's CSS (plotters writes a viewBox and a fixed size); inline SVG in
    // HTML needs no namespace declaration.
    out.replacen("width=\"640\" height=\"260\"", "class=\"plot\"", 1)
        .replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1)
}
