//! The graph as text (layers, edges, cycles) and as a Graphviz dot graph.

use std::fmt::Write;

use crate::graph::ModuleGraph;

/// The whole report: layers, then every edge, then the cycles (or that there are none).
/// `label` names the analyzed directory in the text (`host/src`).
pub fn render_text(graph: &ModuleGraph, label: &str) -> String {
    format!(
        "{}\n{}\n{}",
        render_layers(graph, label),
        render_edges(graph),
        render_cycles(graph, label)
    )
}

/// The layers, bottom up; a cycle is one `{a, b}` entry.
pub fn render_layers(graph: &ModuleGraph, label: &str) -> String {
    let mut out = format!(
        "layers of the top-level modules of {label} (each imports only from lower layers):\n"
    );
    for (number, layer) in graph.layers().iter().enumerate() {
        let entries: Vec<String> = layer
            .iter()
            .map(|component| component_name(component))
            .collect();
        let _ = writeln!(out, "layer {number}: {}", entries.join(", "));
    }
    out
}

fn component_name(component: &[String]) -> String {
    match component {
        [single] => single.clone(),
        members => format!("{{{}}}", members.join(", ")),
    }
}

/// Every edge with the names that make it: `config -> connector (ConnectorState)`.
pub fn render_edges(graph: &ModuleGraph) -> String {
    let mut out = String::from("imports (importer -> imported (names used)):\n");
    for (from, to, edge) in graph.edges() {
        let names: Vec<&str> = edge.names().into_iter().collect();
        let _ = writeln!(out, "{from} -> {to} ({})", names.join(", "));
    }
    out
}

/// `no import cycle between the top-level modules of {label}`, or each cycle: its modules, one
/// shortest way round it, and every edge inside it with the files and names that make it.
pub fn render_cycles(graph: &ModuleGraph, label: &str) -> String {
    let cycles = graph.cycles();
    if cycles.is_empty() {
        return format!("no import cycle between the top-level modules of {label}\n");
    }
    let count = match cycles.len() {
        1 => "1 import cycle".to_owned(),
        many => format!("{many} import cycles"),
    };
    let mut out = format!("{count} between the top-level modules of {label}:\n");
    for (number, cycle) in cycles.iter().enumerate() {
        let _ = writeln!(out, "\ncycle {}: {}", number + 1, cycle.join(", "));
        let _ = writeln!(
            out,
            "  for example {}",
            graph.example_loop(cycle).join(" -> ")
        );
        for (from, to, edge) in graph.edges_within(cycle) {
            let _ = writeln!(out, "  {from} -> {to}");
            for (file, names) in edge.causes() {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let _ = writeln!(out, "    {file}: {}", names.join(", "));
            }
        }
    }
    out
}

/// A Graphviz graph (`dot -Tsvg`): importers above what they import, cycles in red, each edge
/// labelled with the names that make it.
pub fn render_dot(graph: &ModuleGraph) -> String {
    let cycles = graph.cycles();
    let in_cycle = |module: &str| cycles.iter().flatten().any(|member| member == module);
    let same_cycle = |from: &str, to: &str| {
        cycles
            .iter()
            .any(|cycle| cycle.iter().any(|m| m == from) && cycle.iter().any(|m| m == to))
    };
    let mut out = String::from("digraph modules {\n    node [shape=box];\n");
    for module in graph.modules() {
        let color = if in_cycle(module) { " [color=red]" } else { "" };
        let _ = writeln!(out, "    {}{color};", quote(module));
    }
    for (from, to, edge) in graph.edges() {
        let names: Vec<&str> = edge.names().into_iter().collect();
        let color = if same_cycle(from, to) {
            ", color=red"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "    {} -> {} [label={}{color}];",
            quote(from),
            quote(to),
            quote(&names.join(", "))
        );
    }
    out.push_str("}\n");
    out
}

/// A dot string literal.
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cyclic() -> ModuleGraph {
        let mut graph = ModuleGraph::default();
        graph.add_reference("config", "connector", "config.rs", "ConnectorState");
        graph.add_reference("connector", "config", "connector/mod.rs", "Config");
        graph.add_reference("connector", "event", "connector/mqtt.rs", "Event");
        graph
    }

    #[test]
    fn text_lists_layers_edges_and_cycles_with_causes() {
        let text = render_text(&cyclic(), "src");
        let expected = "\
layers of the top-level modules of src (each imports only from lower layers):
layer 0: event
layer 1: {config, connector}

imports (importer -> imported (names used)):
config -> connector (ConnectorState)
connector -> config (Config)
connector -> event (Event)

1 import cycle between the top-level modules of src:

cycle 1: config, connector
  for example config -> connector -> config
  config -> connector
    config.rs: ConnectorState
  connector -> config
    connector/mod.rs: Config
";
        assert_eq!(text, expected);
    }

    #[test]
    fn text_says_when_there_is_no_cycle() {
        let mut graph = ModuleGraph::default();
        graph.add_reference("config", "event", "config.rs", "Event");
        assert_eq!(
            render_cycles(&graph, "host/src"),
            "no import cycle between the top-level modules of host/src\n"
        );
    }

    #[test]
    fn dot_marks_cycles() {
        let dot = render_dot(&cyclic());
        assert!(dot.starts_with("digraph modules {"));
        assert!(dot.contains("\"config\" [color=red];"));
        assert!(dot.contains("\"event\";"));
        assert!(dot.contains("\"config\" -> \"connector\" [label=\"ConnectorState\", color=red];"));
        assert!(dot.contains("\"connector\" -> \"event\" [label=\"Event\"];"));
    }
}
