//! The import graph between top-level modules: its strongly connected components (Tarjan),
//! the cycles among them, and the layers of the condensed graph.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Why one module imports another: for each file of the importer, the names it uses, each the
/// first path segment after the imported module (`crate::connector::ConnectorState` gives
/// `ConnectorState`; `use crate::time;` gives `time`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edge {
    causes: BTreeMap<String, BTreeSet<String>>,
}

impl Edge {
    /// The files (relative to the src directory) that make the edge, with the names each uses.
    pub fn causes(&self) -> &BTreeMap<String, BTreeSet<String>> {
        &self.causes
    }

    /// The names used over all files, sorted.
    pub fn names(&self) -> BTreeSet<&str> {
        self.causes.values().flatten().map(String::as_str).collect()
    }
}

/// Top-level modules (nodes) and which imports which (edges), in sorted order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleGraph {
    modules: BTreeSet<String>,
    edges: BTreeMap<(String, String), Edge>,
}

impl ModuleGraph {
    /// Adds a module (a node), importing nothing yet.
    pub fn add_module(&mut self, module: &str) {
        self.modules.insert(module.to_owned());
    }

    /// Records that `file` of module `from` uses `name` from module `to`. Both modules are
    /// added; a module naming itself makes no edge.
    pub fn add_reference(&mut self, from: &str, to: &str, file: &str, name: &str) {
        self.add_module(from);
        self.add_module(to);
        if from == to {
            return;
        }
        let edge = self
            .edges
            .entry((from.to_owned(), to.to_owned()))
            .or_default();
        let names = edge.causes.entry(file.to_owned()).or_default();
        names.insert(name.to_owned());
    }

    pub fn has_module(&self, module: &str) -> bool {
        self.modules.contains(module)
    }

    pub fn modules(&self) -> impl Iterator<Item = &str> {
        self.modules.iter().map(String::as_str)
    }

    /// Every edge as (importer, imported, why), sorted by importer then imported.
    pub fn edges(&self) -> impl Iterator<Item = (&str, &str, &Edge)> {
        self.edges
            .iter()
            .map(|((from, to), edge)| (from.as_str(), to.as_str(), edge))
    }

    pub fn edge(&self, from: &str, to: &str) -> Option<&Edge> {
        self.edges.get(&(from.to_owned(), to.to_owned()))
    }

    /// The modules `module` imports, sorted.
    pub fn imports<'g>(&'g self, module: &'g str) -> impl Iterator<Item = &'g str> {
        self.edges()
            .filter(move |(from, _, _)| *from == module)
            .map(|(_, to, _)| to)
    }

    /// The edges between members of `component`, sorted.
    pub fn edges_within<'g>(
        &'g self,
        component: &'g [String],
    ) -> impl Iterator<Item = (&'g str, &'g str, &'g Edge)> {
        let inside = |module: &str| component.iter().any(|member| member == module);
        self.edges()
            .filter(move |(from, to, _)| inside(from) && inside(to))
    }

    /// The import cycles: strongly connected components of more than one module, each sorted,
    /// in order of their first module.
    pub fn cycles(&self) -> Vec<Vec<String>> {
        let mut cycles: Vec<Vec<String>> = self
            .components()
            .into_iter()
            .filter(|component| component.len() > 1)
            .collect();
        cycles.sort();
        cycles
    }

    /// The condensed graph (each cycle one node) in layers: layer 0 holds the components that
    /// import no other module, and each other component sits one layer above the highest one
    /// it imports from. Each layer is sorted by first module; each component is sorted.
    pub fn layers(&self) -> Vec<Vec<Vec<String>>> {
        let components = self.components();
        let component_of: BTreeMap<&str, usize> = components
            .iter()
            .enumerate()
            .flat_map(|(index, members)| members.iter().map(move |m| (m.as_str(), index)))
            .collect();
        // Tarjan's order: every component comes after all the components it imports.
        let mut layer_of = vec![0usize; components.len()];
        for (index, members) in components.iter().enumerate() {
            let imported = members
                .iter()
                .flat_map(|member| self.imports(member))
                .filter_map(|to| component_of.get(to).copied())
                .filter(|&other| other != index);
            layer_of[index] = imported.map(|other| layer_of[other] + 1).max().unwrap_or(0);
        }
        let layer_count = layer_of.iter().max().map_or(0, |&top| top + 1);
        let mut layers = vec![Vec::new(); layer_count];
        for (component, layer) in components.into_iter().zip(layer_of) {
            layers[layer].push(component);
        }
        for layer in &mut layers {
            layer.sort();
        }
        layers
    }

    /// One shortest way round a cycle, from its first module back to it: `[a, b, a]`.
    pub fn example_loop(&self, component: &[String]) -> Vec<String> {
        let Some(start) = component.first() else {
            return Vec::new();
        };
        let inside = |module: &str| component.iter().any(|member| member == module);
        let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([start.as_str()]);
        while let Some(module) = queue.pop_front() {
            for next in self.imports(module).filter(|&next| inside(next)) {
                if next == start {
                    return walk_back(&came_from, module, start);
                }
                if !came_from.contains_key(next) {
                    came_from.insert(next, module);
                    queue.push_back(next);
                }
            }
        }
        Vec::new()
    }

    /// The strongly connected components, each sorted, every one after all those it imports.
    fn components(&self) -> Vec<Vec<String>> {
        let names: Vec<&str> = self.modules().collect();
        let index_of: BTreeMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(i, &name)| (name, i))
            .collect();
        let mut successors = vec![Vec::new(); names.len()];
        for (from, to, _) in self.edges() {
            if let (Some(&from), Some(&to)) = (index_of.get(from), index_of.get(to)) {
                successors[from].push(to);
            }
        }
        let mut tarjan = Tarjan::new(successors);
        for node in 0..names.len() {
            tarjan.visit_if_new(node);
        }
        let named = |members: Vec<usize>| -> Vec<String> {
            let mut members: Vec<String> =
                members.into_iter().map(|m| names[m].to_owned()).collect();
            members.sort();
            members
        };
        tarjan.components.into_iter().map(named).collect()
    }
}

/// The path `start -> ... -> last -> start` from a breadth-first search's back links.
fn walk_back<'g>(
    came_from: &BTreeMap<&'g str, &'g str>,
    last: &'g str,
    start: &str,
) -> Vec<String> {
    let mut path = vec![start.to_owned(), last.to_owned()];
    let mut module = last;
    while let Some(&previous) = came_from.get(module) {
        path.push(previous.to_owned());
        module = previous;
    }
    if module != start {
        path.push(start.to_owned());
    }
    path.reverse();
    path
}

/// Tarjan's strongly connected components algorithm over nodes `0..n`.
struct Tarjan {
    successors: Vec<Vec<usize>>,
    index: Vec<Option<usize>>,
    low_link: Vec<usize>,
    stack: Vec<usize>,
    on_stack: Vec<bool>,
    next_index: usize,
    /// Components in the order found: each after every component it reaches.
    components: Vec<Vec<usize>>,
}

impl Tarjan {
    fn new(successors: Vec<Vec<usize>>) -> Self {
        let count = successors.len();
        Tarjan {
            successors,
            index: vec![None; count],
            low_link: vec![0; count],
            stack: Vec::new(),
            on_stack: vec![false; count],
            next_index: 0,
            components: Vec::new(),
        }
    }

    fn visit_if_new(&mut self, node: usize) {
        if self.index[node].is_none() {
            self.visit(node);
        }
    }

    /// The recursion is as deep as the longest import chain: a crate's module count at most.
    fn visit(&mut self, node: usize) {
        self.index[node] = Some(self.next_index);
        self.low_link[node] = self.next_index;
        self.next_index += 1;
        self.stack.push(node);
        self.on_stack[node] = true;
        for next in self.successors[node].clone() {
            match self.index[next] {
                None => {
                    self.visit(next);
                    self.low_link[node] = self.low_link[node].min(self.low_link[next]);
                }
                Some(next_index) if self.on_stack[next] => {
                    self.low_link[node] = self.low_link[node].min(next_index);
                }
                Some(_) => {}
            }
        }
        if Some(self.low_link[node]) == self.index[node] {
            self.pop_component(node);
        }
    }

    fn pop_component(&mut self, root: usize) {
        let mut component = Vec::new();
        while let Some(member) = self.stack.pop() {
            self.on_stack[member] = false;
            component.push(member);
            if member == root {
                break;
            }
        }
        self.components.push(component);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &str)], modules: &[&str]) -> ModuleGraph {
        let mut graph = ModuleGraph::default();
        for module in modules {
            graph.add_module(module);
        }
        for (from, to) in edges {
            graph.add_reference(from, to, &format!("{from}.rs"), "Name");
        }
        graph
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|&name| name.to_owned()).collect()
    }

    #[test]
    fn acyclic_graph_has_no_cycle_and_layers_in_order() {
        let graph = graph(
            &[
                ("app", "config"),
                ("app", "store"),
                ("store", "event"),
                ("config", "event"),
            ],
            &["loose"],
        );
        assert!(graph.cycles().is_empty());
        assert_eq!(
            graph.layers(),
            [
                vec![strings(&["event"]), strings(&["loose"])],
                vec![strings(&["config"]), strings(&["store"])],
                vec![strings(&["app"])],
            ]
        );
    }

    #[test]
    fn cycles_are_found_and_condensed_in_layers() {
        let graph = graph(
            &[
                ("a", "b"),
                ("b", "c"),
                ("c", "a"),
                ("c", "base"),
                ("top", "a"),
                ("x", "y"),
                ("y", "x"),
            ],
            &[],
        );
        assert_eq!(
            graph.cycles(),
            [strings(&["a", "b", "c"]), strings(&["x", "y"])]
        );
        assert_eq!(
            graph.layers(),
            [
                vec![strings(&["base"]), strings(&["x", "y"])],
                vec![strings(&["a", "b", "c"])],
                vec![strings(&["top"])],
            ]
        );
        let cycle = strings(&["a", "b", "c"]);
        assert_eq!(graph.edges_within(&cycle).count(), 3);
        assert_eq!(graph.example_loop(&cycle), strings(&["a", "b", "c", "a"]));
        assert_eq!(
            graph.example_loop(&strings(&["x", "y"])),
            strings(&["x", "y", "x"])
        );
    }

    #[test]
    fn self_references_make_no_edge() {
        let graph = graph(&[("a", "a")], &[]);
        assert_eq!(graph.edges().count(), 0);
        assert!(graph.cycles().is_empty());
    }

    #[test]
    fn edges_collect_files_and_names() {
        let mut graph = ModuleGraph::default();
        graph.add_reference("config", "connector", "config.rs", "State");
        graph.add_reference("config", "connector", "config.rs", "Kind");
        graph.add_reference("config", "connector", "config/load.rs", "State");
        let edge = graph.edge("config", "connector").expect("edge recorded");
        assert_eq!(
            edge.names().into_iter().collect::<Vec<_>>(),
            ["Kind", "State"]
        );
        assert_eq!(edge.causes().len(), 2);
    }
}
