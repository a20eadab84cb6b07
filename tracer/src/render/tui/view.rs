//! What the terminal view shows, as a pure function of its [`Model`]: the flows table, the
//! selected flow's hops with its NAT steps and stops, the notes, a status line and the keys. The
//! keys change only the model; drawing reads it. Unit-tested on ratatui's `TestBackend`.

use std::{collections::BTreeMap, collections::VecDeque};

use ratatui::{
    layout::{Constraint, Layout},
    style::{Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Block, Cell, Paragraph, Row, Table, TableState, Wrap},
    Frame,
};

use crate::{
    correlate::{FlowId, FlowReport, HopTiming, Leg, NatEntry},
    model::{NatKind, Orientation},
    render::{text, Progress},
};

/// Flows the view keeps at most; past it the flow seen longest ago goes (and is counted).
pub(super) const MAX_FLOWS: usize = 10_000;
/// Notes kept (the newest are shown).
const MAX_NOTES: usize = 64;

/// How the table is ordered (`s` cycles, `r` reverses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SortBy {
    LastSeen,
    Packets,
    Drops,
    Id,
}

impl SortBy {
    fn next(self) -> Self {
        match self {
            Self::LastSeen => Self::Packets,
            Self::Packets => Self::Drops,
            Self::Drops => Self::Id,
            Self::Id => Self::LastSeen,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::LastSeen => "last seen",
            Self::Packets => "packets",
            Self::Drops => "drops",
            Self::Id => "flow #",
        }
    }
}

/// What a key asks of the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    None,
    /// End the trace (`q`, Ctrl-C).
    Quit,
}

/// A key, as the view takes it (decoupled from the terminal library's events for the tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Key {
    Char(char),
    CtrlC,
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    Enter,
    Esc,
    Backspace,
}

/// Everything the view shows.
#[derive(Debug)]
pub(super) struct Model {
    flows: BTreeMap<FlowId, FlowReport>,
    /// Flows the view let go of to stay within [`MAX_FLOWS`].
    pub forgotten: u64,
    notes: VecDeque<String>,
    pub mode: String,
    pub hooks: usize,
    pub progress: Progress,
    pub elapsed_s: f64,
    pub per_second: f64,
    /// Kernel monotonic time now, for "last seen" (ns).
    pub now_ns: u64,
    sort: SortBy,
    reverse: bool,
    /// The filter applied, and the one being typed after `/` (while `Some`).
    filter: String,
    typing: Option<String>,
    /// The selected flow (kept across re-sorting).
    selected: Option<FlowId>,
    /// Rows per page, from the last draw.
    page: usize,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            flows: BTreeMap::new(),
            forgotten: 0,
            notes: VecDeque::new(),
            mode: String::new(),
            hooks: 0,
            progress: Progress::default(),
            elapsed_s: 0.0,
            per_second: 0.0,
            now_ns: 0,
            sort: SortBy::LastSeen,
            reverse: false,
            filter: String::new(),
            typing: None,
            selected: None,
            page: 10,
        }
    }
}

impl Model {
    pub(super) fn flow(&mut self, flow: &FlowReport) {
        if !self.flows.contains_key(&flow.id) && self.flows.len() >= MAX_FLOWS {
            let oldest = self
                .flows
                .values()
                .filter(|f| Some(f.id) != self.selected)
                .min_by_key(|f| f.last_ns)
                .map(|f| f.id);
            if let Some(id) = oldest {
                self.flows.remove(&id);
                self.forgotten += 1;
            }
        }
        self.flows.insert(flow.id, flow.clone());
    }

    pub(super) fn note(&mut self, note: &str) {
        if self.notes.len() == MAX_NOTES {
            self.notes.pop_front();
        }
        self.notes.push_back(note.trim_end().to_string());
    }

    /// The rows shown, in order: the flows the filter keeps, sorted.
    fn rows(&self) -> Vec<&FlowReport> {
        let needle = self.filter.to_lowercase();
        let mut rows: Vec<&FlowReport> = self
            .flows
            .values()
            .filter(|f| needle.is_empty() || searchable(f).contains(&needle))
            .collect();
        let key = |f: &FlowReport| match self.sort {
            SortBy::LastSeen => f.last_ns,
            SortBy::Packets => f.packets_out + f.packets_back,
            SortBy::Drops => drops(f),
            SortBy::Id => f.id.0,
        };
        // Biggest (newest) first, ties by id; `r` turns it around.
        rows.sort_by(|a, b| key(b).cmp(&key(a)).then(a.id.cmp(&b.id)));
        if self.sort == SortBy::Id {
            rows.reverse();
        }
        if self.reverse {
            rows.reverse();
        }
        rows
    }

    /// Takes a key; what it asks of the trace.
    pub(super) fn key(&mut self, key: Key) -> Action {
        if let Some(typed) = self.typing.as_mut() {
            match key {
                Key::Enter => {
                    self.filter = self.typing.take().unwrap_or_default();
                }
                Key::Esc => self.typing = None,
                Key::Backspace => {
                    typed.pop();
                }
                Key::Char(c) => typed.push(c),
                Key::CtrlC => return Action::Quit,
                _ => {}
            }
            return Action::None;
        }
        match key {
            Key::Char('q') | Key::CtrlC => return Action::Quit,
            Key::Char('s') => self.sort = self.sort.next(),
            Key::Char('r') => self.reverse = !self.reverse,
            Key::Char('/') => self.typing = Some(self.filter.clone()),
            Key::Esc => self.filter.clear(),
            Key::Up | Key::Char('k') => self.step(-1),
            Key::Down | Key::Char('j') => self.step(1),
            Key::PageUp => self.step(-(self.page as isize)),
            Key::PageDown => self.step(self.page as isize),
            Key::Home => self.step(isize::MIN / 2),
            Key::End => self.step(isize::MAX / 2),
            _ => {}
        }
        Action::None
    }

    fn step(&mut self, by: isize) {
        let ids: Vec<FlowId> = self.rows().iter().map(|f| f.id).collect();
        if ids.is_empty() {
            return;
        }
        let at = self
            .selected
            .and_then(|s| ids.iter().position(|i| *i == s))
            .unwrap_or(0) as isize;
        let to = (at + by).clamp(0, ids.len() as isize - 1) as usize;
        self.selected = Some(ids[to]);
    }

    /// Draws the whole view.
    pub(super) fn draw(&mut self, frame: &mut Frame<'_>) {
        let notes = if self.notes.is_empty() { 0 } else { 3 };
        let [table, hops, notes_area, status, keys] = Layout::vertical([
            Constraint::Percentage(45),
            Constraint::Min(6),
            Constraint::Length(notes),
            Constraint::Length(1),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        self.page = usize::from(table.height.saturating_sub(3)).max(1);
        let rows = self.rows();
        // The selection follows its flow; without one (or filtered out), the first row.
        let index = self
            .selected
            .and_then(|s| rows.iter().position(|f| f.id == s))
            .or((!rows.is_empty()).then_some(0));
        let selected = index.map(|i| rows[i].clone());
        let table_widget = self.table(&rows);
        let mut state = TableState::default().with_selected(index);
        frame.render_stateful_widget(table_widget, table, &mut state);
        frame.render_widget(hop_diagram(selected.as_ref()), hops);
        if notes > 0 {
            frame.render_widget(self.notes_widget(), notes_area);
        }
        frame.render_widget(Paragraph::new(self.status_line()), status);
        frame.render_widget(Paragraph::new(self.keys_line()).dim(), keys);
        if self.selected.is_none() {
            self.selected = selected.map(|f| f.id);
        }
    }

    fn table(&self, rows: &[&FlowReport]) -> Table<'static> {
        let header = Row::new(
            [
                "#",
                "proto",
                "container side",
                "peer",
                "out",
                "back",
                "NAT",
                "last seen",
                "drops",
            ]
            .map(|h| Cell::from(h).bold()),
        );
        let body = rows.iter().map(|f| {
            let (ours, peer) = match f.origin {
                Orientation::Inbound => (f.dst.to_string(), f.src.to_string()),
                _ => (f.src.to_string(), f.dst.to_string()),
            };
            let dropped = drops(f);
            let row = Row::new(vec![
                Cell::from(f.id.to_string()),
                Cell::from(f.proto.to_string()),
                Cell::from(ours),
                Cell::from(peer),
                Cell::from(f.packets_out.to_string()),
                Cell::from(f.packets_back.to_string()),
                Cell::from(nat_summary(f)),
                Cell::from(ago(self.now_ns, f.last_ns)),
                Cell::from(if dropped == 0 {
                    String::new()
                } else {
                    dropped.to_string()
                }),
            ]);
            if dropped > 0 {
                row.red()
            } else {
                row
            }
        });
        let widths = [
            Constraint::Length(5),
            Constraint::Length(6),
            Constraint::Min(22),
            Constraint::Min(22),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Min(18),
            Constraint::Length(9),
            Constraint::Length(6),
        ];
        let arrow = if self.reverse { "▲" } else { "▼" };
        let mut title = format!(
            " Flows ({} of {}) · sorted by {} {arrow} ",
            rows.len(),
            self.flows.len(),
            self.sort.name()
        );
        if !self.filter.is_empty() {
            title.push_str(&format!("· filter: {} ", self.filter));
        }
        if self.forgotten > 0 {
            title.push_str(&format!("· {} older flows let go ", self.forgotten));
        }
        Table::new(body, widths)
            .header(header)
            .block(Block::bordered().title(title))
            .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
            .highlight_symbol("› ")
    }

    fn notes_widget(&self) -> Paragraph<'static> {
        let lines: Vec<Line<'static>> = self
            .notes
            .iter()
            .rev()
            .take(2)
            .rev()
            .map(|n| Line::from(format!("** {n}")).yellow())
            .collect();
        Paragraph::new(lines)
            .block(Block::default().title(format!(" Notes ({}) ", self.notes.len())))
    }

    fn status_line(&self) -> Line<'static> {
        let p = &self.progress;
        let lost = format!("{} events lost", p.lost);
        Line::from(vec![
            Span::raw(format!(
                " {:.0} s · {} hooks ({}) · {} flows · {} packet sightings ({:.0}/s) · ",
                self.elapsed_s, self.hooks, self.mode, p.flows, p.sightings, self.per_second
            )),
            if p.lost > 0 {
                Span::raw(lost).red().bold()
            } else {
                Span::raw(lost)
            },
        ])
        .reversed()
    }

    fn keys_line(&self) -> Line<'static> {
        match &self.typing {
            Some(t) => Line::from(format!(
                " filter: {t}▏   Enter apply · Esc cancel (matches addresses, ports, hooks, NAT, rules)"
            )),
            None => Line::from(
                " ↑↓/jk select · PgUp/PgDn · s sort · r reverse · / filter · Esc clear filter · q quit",
            ),
        }
    }
}

/// Packets of a flow that stopped where they were lost (dropped, or not seen again).
fn drops(f: &FlowReport) -> u64 {
    f.stops
        .iter()
        .filter(|s| s.cause.is_loss())
        .map(|s| s.count)
        .sum()
}

/// The table's NAT cell: `SNAT 10.200.2.1:40000`, `DNAT 172.17.0.2:80`.
fn nat_summary(f: &FlowReport) -> String {
    let parts: Vec<String> = f
        .nat
        .iter()
        .map(|e| {
            let kind = match e.step.kind {
                NatKind::Snat => "SNAT",
                NatKind::Dnat => "DNAT",
            };
            format!("{kind} {}", e.step.after)
        })
        .collect();
    parts.join(", ")
}

/// What the filter looks in: the flow's words, lower case.
fn searchable(f: &FlowReport) -> String {
    let mut s = format!("{} {} {} {}", f.id, f.proto, f.src, f.dst);
    for h in f.hops.iter().chain(&f.hops_back) {
        s.push(' ');
        s.push_str(&h.hook);
    }
    for e in f.nat.iter().chain(&f.nat_back) {
        s.push_str(&format!(" {} {}", e.step.before, e.step.after));
        if let Some(rule) = &e.step.rule {
            s.push(' ');
            s.push_str(rule);
        }
    }
    s.to_lowercase()
}

/// `3.2s ago`, `now`.
fn ago(now_ns: u64, last_ns: u64) -> String {
    let s = now_ns.saturating_sub(last_ns) as f64 / 1e9;
    if s < 0.5 {
        "now".to_string()
    } else if s < 60.0 {
        format!("{s:.0}s ago")
    } else {
        format!("{:.0}m ago", s / 60.0)
    }
}

/// The selected flow's path, one hook per line, with each NAT step drawn between the two hooks
/// it happened between, the per-hop latency, and where packets stopped and why.
fn hop_diagram(flow: Option<&FlowReport>) -> Paragraph<'static> {
    let Some(f) = flow else {
        return Paragraph::new("no flow yet: waiting for packets")
            .block(Block::bordered().title(" Hops "));
    };
    let mut lines =
        vec![Line::from(text::flow_block(f).lines().next().unwrap_or("").to_string()).bold()];
    leg(
        &mut lines,
        "out",
        &f.hops,
        &f.nat,
        text::out_nat_line,
        f,
        Leg::Out,
    );
    if !f.hops_back.is_empty() {
        leg(
            &mut lines,
            "back",
            &f.hops_back,
            &f.nat_back,
            text::back_nat_line,
            f,
            Leg::Back,
        );
    }
    for note in &f.notes {
        lines.push(Line::from(format!("note: {note}")).dim());
    }
    Paragraph::new(lines)
        .wrap(Wrap { trim: false })
        .block(Block::bordered().title(format!(" Flow {} hops ", f.id)))
}

fn leg(
    lines: &mut Vec<Line<'static>>,
    name: &str,
    hops: &[HopTiming],
    nat: &[NatEntry],
    nat_line: fn(&NatEntry) -> String,
    f: &FlowReport,
    which: Leg,
) {
    lines.push(Line::from(format!("{name}:")).underlined());
    let mut drawn = vec![false; nat.len()];
    for (i, hop) in hops.iter().enumerate() {
        if let Some(prev) = i.checked_sub(1).map(|p| &hops[p]) {
            lines.push(Line::from("    │").dim());
            for (n, e) in nat.iter().enumerate() {
                if !drawn[n] && e.step.between.0 == prev.hook && e.step.between.1 == hop.hook {
                    drawn[n] = true;
                    lines.push(
                        Line::from(format!("    ├─{}", nat_line(e).trim_end()))
                            .cyan()
                            .bold(),
                    );
                    lines.push(Line::from("    │").dim());
                }
            }
        }
        let delta = if hop.samples == 0 {
            "+?".to_string()
        } else {
            text::format_delta_us(hop.delta_us)
        };
        lines.push(Line::from(vec![
            Span::raw("  ● "),
            Span::raw(format!("{:<28}", hop.hook)).bold(),
            Span::raw(format!(
                " {:<8} {:>9}   {} pkts",
                hop.dir.to_string(),
                delta,
                hop.packets
            )),
        ]));
        for s in f
            .stops
            .iter()
            .filter(|s| s.leg == which && s.after_hook == hop.hook && s.after_dir == hop.dir)
        {
            let line = Line::from(format!("    ✗{}", text::stop_line(s).trim_end()));
            lines.push(if s.cause.is_loss() {
                line.red().bold()
            } else {
                line.yellow()
            });
        }
    }
    for (e, _) in nat.iter().zip(&drawn).filter(|(_, d)| !**d) {
        lines.push(Line::from(format!("    {}", nat_line(e).trim())).cyan());
    }
    // Stops at a hook not in this leg's chain (e.g. before the first hop was seen).
    for s in f.stops.iter().filter(|s| {
        s.leg == which
            && !hops
                .iter()
                .any(|h| h.hook == s.after_hook && h.dir == s.after_dir)
    }) {
        lines.push(Line::from(format!("    ✗{}", text::stop_line(s).trim_end())).red());
    }
}

#[cfg(test)]
mod tests {
    use ratatui::{backend::TestBackend, Terminal};

    use super::*;
    use crate::render::tests::masq_flow;

    fn screen(model: &mut Model) -> String {
        let mut term = Terminal::new(TestBackend::new(140, 40)).expect("test terminal");
        term.draw(|f| model.draw(f)).expect("draw");
        let buf = term.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    fn two_flows() -> Model {
        let mut m = Model::default();
        let a = masq_flow();
        let mut b = masq_flow();
        b.id = FlowId(2);
        b.dst = crate::correlate::tests::ep("10.200.2.9:53");
        b.stops.clear();
        b.last_ns = 20_000;
        m.flow(&a);
        m.flow(&b);
        m
    }

    #[test]
    fn the_selected_flow_is_drawn_with_its_nat_step_between_its_hooks() {
        let mut m = two_flows();
        // Newest first: flow 2, then 1; down selects flow 1.
        m.key(Key::Down);
        let s = screen(&mut m);
        assert!(s.contains("Flow 1 hops"), "{s}");
        let br = s.find("● host:pt-br0").expect("bridge hop");
        let snat = s.find("├─  => SNAT (MASQUERADE)").expect("NAT step");
        let up = s.find("● host:pt-up0").expect("uplink hop");
        assert!(
            br < snat && snat < up,
            "NAT between bridge and uplink:\n{s}"
        );
        assert!(
            s.contains("lost: 1 after host:pt-br0 ingress (reason: NETFILTER_DROP)"),
            "{s}"
        );
        assert!(s.contains("SNAT 10.200.2.1:41234"), "NAT column:\n{s}");
    }

    #[test]
    fn the_filter_keeps_matching_flows_and_esc_clears_it() {
        let mut m = two_flows();
        for k in [
            Key::Char('/'),
            Key::Char(':'),
            Key::Char('5'),
            Key::Char('3'),
            Key::Enter,
        ] {
            assert_eq!(m.key(k), Action::None);
        }
        assert_eq!(m.rows().iter().map(|f| f.id.0).collect::<Vec<_>>(), [2]);
        assert!(screen(&mut m).contains("Flows (1 of 2)"));
        m.key(Key::Esc);
        assert_eq!(m.rows().len(), 2);
    }

    #[test]
    fn sorting_cycles_and_reverses() {
        let mut m = two_flows();
        assert_eq!(m.rows()[0].id.0, 2, "last seen, newest first");
        m.key(Key::Char('s'));
        m.key(Key::Char('s'));
        assert_eq!(m.sort, SortBy::Drops);
        assert_eq!(m.rows()[0].id.0, 1, "the flow with drops first");
        m.key(Key::Char('r'));
        assert_eq!(m.rows()[0].id.0, 2);
        assert_eq!(m.key(Key::Char('q')), Action::Quit);
        assert_eq!(m.key(Key::CtrlC), Action::Quit);
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut m = Model::default();
        let mut f = masq_flow();
        for i in 0..(MAX_FLOWS as u64 + 3) {
            f.id = FlowId(i);
            f.last_ns = i;
            m.flow(&f);
        }
        assert_eq!(m.flows.len(), MAX_FLOWS);
        assert_eq!(m.forgotten, 3);
        assert!(!m.flows.contains_key(&FlowId(0)), "the oldest went first");
    }
}
