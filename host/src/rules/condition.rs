//! A rule's `if`: a CEL expression compiled once at load and evaluated per event.
//!
//! Expressions see four variables:
//!
//! - `event`: the normalized event as a map: `id`, `source`, `vendor`, `kind` (kebab-case),
//!   `action`, `device` (`id`, `product`, `name`), `time_ms`, `properties` (a list of maps
//!   `code`, `value`, `time_ms`, `service`) and `attributes` (a map of strings);
//! - `props`: the properties by code (the first of a code), for `props.temperature > 30`;
//! - `payload`: the vendor body, parsed JSON;
//! - `twin`: the device twin of the event's device (`crate::twin`), which the event has
//!   already updated, as a map: `online` (a boolean, or `null` before any `online` or
//!   `offline` event), `last_seen_ms`, `online_changed_ms` (or `null`), `device` (`id`,
//!   `product`, `name`) and `props` (the last value of every property by code). It is `null`
//!   when the twin is off (`[twin] max_devices = 0`) or the event has none (a timer, a
//!   command, no device id).
//!
//! and one function of the host's besides CEL's own: `twin_of("device-id")`, another
//! device's twin as the same map, or `null` when the host has none (`twin_of(
//! "hall-motion") != null && twin_of("hall-motion").props.occupied`). It reads the twin as
//! the events handled so far left it; a device on another worker may be a few events ahead
//! or behind the current event.
//!
//! Values are typed: booleans, integers, floats, strings and `null`; property values that are
//! JSON arrays or objects become CEL lists and maps. A field the event lacks is an evaluation
//! error, so write `has(props.temperature) && props.temperature > 30` for optional ones.
//!
//! Building these values is the expensive part of a condition, so it is done lazily, at most
//! once per event and variable, in an [`EventScope`] that every rule evaluated on the event
//! shares; an event that no rule with an `if` matches structurally never builds anything.
//! `twin_of` builds its map on each call (it is registered only for the conditions that call
//! it).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock, OnceLock};

use cel::common::ast::{EntryExpr, Expr, IdedEntryExpr, IdedExpr};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, Program};

use crate::event::{Event, Value};
use crate::twin::{Twin, Twins};

/// The variables an expression may use.
pub(crate) const VARIABLES: [&str; 4] = ["event", "props", "payload", "twin"];

/// The function that reads another device's twin.
const TWIN_OF: &str = "twin_of";

/// How deep an expression's syntax tree may nest (`a && b && c` is two levels, each
/// parenthesized call one more): far beyond hand-written conditions, far below what
/// overflows a worker thread's stack when evaluated.
pub(crate) const MAX_DEPTH: usize = 64;

/// The stack of the thread that parses expressions: the parser recurses on nesting before
/// [`MAX_DEPTH`] can be checked.
const COMPILE_STACK: usize = 256 << 20;

/// CEL's type names, which are identifiers too (`type(x) == string`).
const TYPE_NAMES: [&str; 11] = [
    "bool",
    "bytes",
    "double",
    "dyn",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "type",
    "uint",
];

/// The standard CEL environment, built once for the process: compiling and evaluating share it.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// A compiled `if`.
pub(crate) struct Condition {
    source: String,
    program: Program,
    /// Whether it calls [`TWIN_OF`], which is then registered for each evaluation.
    calls_twin_of: bool,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

/// Why an expression was refused at load: the reason, and where in the expression (character
/// offset from 0) when the parser says.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CompileError {
    pub(crate) offset: Option<usize>,
    pub(crate) reason: String,
}

impl Condition {
    /// Parses `source` and checks that it only uses [`VARIABLES`] (besides the variables its
    /// own macros bind, such as `p` in `event.properties.exists(p, …)`).
    ///
    /// The parser and the evaluator recurse on the expression's nesting, so an expression
    /// nested deeper than [`MAX_DEPTH`] is refused: it would overflow a worker's stack on the
    /// first event. Parsing itself runs on a thread with a large stack, so that even an absurd
    /// expression is refused rather than aborting the service on reload.
    pub(crate) fn compile(source: &str) -> Result<Self, CompileError> {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("iotrules-cel-compile".into())
                .stack_size(COMPILE_STACK)
                .spawn_scoped(scope, || Self::compile_here(source))
                .map_err(|e| CompileError {
                    offset: None,
                    reason: format!("cannot start the expression compiler: {e}"),
                })?
                .join()
                .unwrap_or_else(|_| {
                    Err(CompileError {
                        offset: None,
                        reason: "the expression compiler failed on this expression".into(),
                    })
                })
        })
    }

    fn compile_here(source: &str) -> Result<Self, CompileError> {
        let program = ENV.compile(source).map_err(|errors| {
            let first = errors.errors.first();
            CompileError {
                offset: first.and_then(|e| offset_of(source, e.pos.0, e.pos.1)),
                reason: match first {
                    Some(e) if errors.errors.len() > 1 => {
                        format!("{} (and {} more)", e.msg, errors.errors.len() - 1)
                    }
                    Some(e) => e.msg.clone(),
                    None => errors.to_string(),
                },
            }
        })?;
        let depth = depth(program.expression());
        if depth > MAX_DEPTH {
            return Err(CompileError {
                offset: None,
                reason: format!(
                    "the expression nests {depth} levels deep, more than the {MAX_DEPTH} allowed"
                ),
            });
        }
        let mut free = Vec::new();
        let mut calls = Vec::new();
        free_variables(program.expression(), &mut Vec::new(), &mut free, &mut calls);
        let position = |id: u64| {
            program
                .source_info()
                .offset_for(id)
                .map(|(start, _)| start as usize)
        };
        let calls_twin_of = calls.iter().any(|(_, name)| name == TWIN_OF);
        if let Some((id, name)) = calls
            .into_iter()
            .find(|(_, name)| name != TWIN_OF && !is_function(name))
        {
            return Err(CompileError {
                offset: position(id),
                reason: format!("unknown function '{name}'"),
            });
        }
        if let Some((id, name)) = free.into_iter().find(|(_, name)| {
            !VARIABLES.contains(&name.as_str()) && !TYPE_NAMES.contains(&name.as_str())
        }) {
            return Err(CompileError {
                offset: position(id),
                reason: format!(
                    "undeclared reference to '{name}' (the variables are {})",
                    VARIABLES.join(", ")
                ),
            });
        }
        Ok(Condition {
            source: source.to_owned(),
            program,
            calls_twin_of,
        })
    }

    /// The expression as written.
    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the expression on the event `scope` holds. Anything but `true` or `false` is
    /// an error: a missing key, a type mismatch, a result that is not a boolean.
    pub(crate) fn evaluate(&self, scope: &EventScope<'_>) -> Result<bool, String> {
        let mut context = Context::with_env(ENV.clone());
        context.set_variable_resolver(scope);
        if self.calls_twin_of {
            let twins = scope.twins.cloned();
            // Not declared by the standard environment, so it cannot conflict.
            let _ = context.add_function(TWIN_OF, move |id: Arc<String>| -> cel::Value {
                let value = twins.as_ref().and_then(|twins| twins.with(&id, twin_value));
                value.map_or(cel::Value::Null, |value| {
                    cel::Value::try_from(value.as_ref()).unwrap_or(cel::Value::Null)
                })
            });
        }
        match self.program.execute(&context) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!(
                "the expression gave {} ({other:?}), not a boolean",
                other.type_of()
            )),
            // One line for the logs: some errors quote a multi-line regex diagnostic.
            Err(error) => Err(error
                .to_string()
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
                .join(" ")),
        }
    }
}

/// The expressions of a map's or a struct's entries: each key and value, each field value.
fn entry_exprs(entries: &[IdedEntryExpr]) -> Vec<&IdedExpr> {
    entries
        .iter()
        .flat_map(|entry| match &entry.expr {
            EntryExpr::MapEntry(entry) => vec![&entry.key, &entry.value],
            EntryExpr::StructField(field) => vec![&field.value],
        })
        .collect()
}

/// The depth of the syntax tree.
fn depth(expr: &IdedExpr) -> usize {
    let children: Vec<&IdedExpr> = match &expr.expr {
        Expr::Call(call) => call
            .target
            .as_deref()
            .into_iter()
            .chain(&call.args)
            .collect(),
        Expr::Comprehension(comp) => vec![
            &comp.iter_range,
            &comp.accu_init,
            &comp.loop_cond,
            &comp.loop_step,
            &comp.result,
        ],
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Map(map) => entry_exprs(&map.entries),
        Expr::Struct(object) => entry_exprs(&object.entries),
        Expr::Select(select) => vec![&*select.operand],
        _ => Vec::new(),
    };
    1 + children.into_iter().map(depth).max().unwrap_or(0)
}

/// Whether `name` is a function of the environment, or an operator (`_==_`, `@in`, `!_`, …;
/// the parser only makes those of the operators it knows). `cel` does not say which functions
/// an environment has, but refuses to add a function to a context that its environment
/// declares, which tells.
fn is_function(name: &str) -> bool {
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        || name.starts_with('_')
    {
        return true;
    }
    Context::with_env(ENV.clone())
        .add_function(name, || false)
        .is_err()
}

/// The character offset in `source` of the parser's `line` (from 1) and `column` (from 0).
fn offset_of(source: &str, line: isize, column: isize) -> Option<usize> {
    let line = usize::try_from(line).ok()?.checked_sub(1)?;
    let column = usize::try_from(column).ok()?;
    let mut offset = 0;
    for (i, text) in source.split_inclusive('\n').enumerate() {
        if i == line {
            return Some(offset + column.min(text.chars().count()));
        }
        offset += text.chars().count();
    }
    None
}

/// Collects the identifiers `expr` uses that no enclosing comprehension binds, with the id of
/// the node that uses them (for its position).
fn free_variables(
    expr: &IdedExpr,
    bound: &mut Vec<String>,
    free: &mut Vec<(u64, String)>,
    calls: &mut Vec<(u64, String)>,
) {
    match &expr.expr {
        Expr::Ident(name) if !name.starts_with('@') && !bound.contains(name) => {
            free.push((expr.id, name.clone()));
        }
        Expr::Call(call) => {
            calls.push((expr.id, call.func_name.clone()));
            if let Some(target) = &call.target {
                free_variables(target, bound, free, calls);
            }
            for arg in &call.args {
                free_variables(arg, bound, free, calls);
            }
        }
        Expr::Comprehension(comp) => {
            free_variables(&comp.iter_range, bound, free, calls);
            free_variables(&comp.accu_init, bound, free, calls);
            let depth = bound.len();
            bound.push(comp.accu_var.clone());
            free_variables(&comp.result, bound, free, calls);
            bound.push(comp.iter_var.clone());
            bound.extend(comp.iter_var2.clone());
            free_variables(&comp.loop_cond, bound, free, calls);
            free_variables(&comp.loop_step, bound, free, calls);
            bound.truncate(depth);
        }
        Expr::List(list) => {
            for element in &list.elements {
                free_variables(element, bound, free, calls);
            }
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                if let EntryExpr::MapEntry(entry) = &entry.expr {
                    free_variables(&entry.key, bound, free, calls);
                    free_variables(&entry.value, bound, free, calls);
                }
            }
        }
        Expr::Struct(object) => {
            for entry in &object.entries {
                if let EntryExpr::StructField(field) = &entry.expr {
                    free_variables(&field.value, bound, free, calls);
                }
            }
        }
        Expr::Select(select) => free_variables(&select.operand, bound, free, calls),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
        #[allow(unreachable_patterns)]
        _ => {}
    }
}

/// The expression variables of one event, each built on first use and then shared by every
/// rule evaluated on the event. Strings borrow from the event rather than being copied.
pub struct EventScope<'e> {
    event: &'e Event,
    /// The twins `twin` and `twin_of` read; none when the twin is off.
    twins: Option<&'e Arc<Twins>>,
    event_value: OnceLock<Box<dyn Val + 'e>>,
    props: OnceLock<Box<dyn Val + 'e>>,
    payload: OnceLock<Box<dyn Val + 'e>>,
    twin: OnceLock<Box<dyn Val + 'e>>,
}

impl<'e> EventScope<'e> {
    /// A scope for `event`, without twins; nothing is built until an expression asks.
    pub fn new(event: &'e Event) -> Self {
        EventScope {
            event,
            twins: None,
            event_value: OnceLock::new(),
            props: OnceLock::new(),
            payload: OnceLock::new(),
            twin: OnceLock::new(),
        }
    }

    /// The scope reading `twin` and `twin_of` from `twins` (`None`: every twin is `null`).
    pub fn with_twins(mut self, twins: Option<&'e Arc<Twins>>) -> Self {
        self.twins = twins;
        self
    }

    /// The event the scope describes.
    pub fn event(&self) -> &'e Event {
        self.event
    }

    /// How many of the variables have been built (for tests and benchmarks).
    pub fn built(&self) -> usize {
        [&self.event_value, &self.props, &self.payload, &self.twin]
            .iter()
            .filter(|cell| cell.get().is_some())
            .count()
    }
}

impl VariableResolver for EventScope<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let value: &'b (dyn Val + 'b) = match variable {
            "event" => self
                .event_value
                .get_or_init(|| event_value(self.event))
                .as_ref(),
            "props" => self.props.get_or_init(|| props_value(self.event)).as_ref(),
            "payload" => self
                .payload
                .get_or_init(|| json_value(self.event.payload.to_value()))
                .as_ref(),
            "twin" => self
                .twin
                .get_or_init(|| {
                    let twin = self
                        .twins
                        .and_then(|twins| twins.with(&self.event.device.id, twin_value));
                    twin.unwrap_or_else(|| Box::new(CelNull))
                })
                .as_ref(),
            _ => return None,
        };
        Some(CowVal::Borrowed(value))
    }
}

type Boxed<'e> = Box<dyn Val + 'e>;

fn string(s: &str) -> Boxed<'_> {
    Box::new(CelString::from(s))
}

fn optional_string(s: Option<&str>) -> Boxed<'_> {
    s.map_or_else(|| Box::new(CelNull) as Boxed<'_>, string)
}

fn map<'e>(entries: impl IntoIterator<Item = (&'e str, Boxed<'e>)>) -> Boxed<'e> {
    let entries: HashMap<CelMapKey<'e>, Boxed<'e>> = entries
        .into_iter()
        .map(|(k, v)| (CelMapKey::from(k), v))
        .collect();
    Box::new(CelMap::from(entries))
}

fn event_value(event: &Event) -> Boxed<'_> {
    let device = map([
        ("id", string(&event.device.id)),
        ("product", optional_string(event.device.product.as_deref())),
        ("name", optional_string(event.device.name.as_deref())),
    ]);
    let properties: Vec<Boxed<'_>> = event
        .properties
        .iter()
        .map(|p| {
            map([
                ("code", string(&p.code)),
                ("value", value(&p.value)),
                (
                    "time_ms",
                    p.time_ms
                        .map_or_else(|| Box::new(CelNull) as Boxed<'_>, |t| int(t)),
                ),
                ("service", optional_string(p.service.as_deref())),
            ])
        })
        .collect();
    let attributes = map(event
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), string(v))));
    map([
        ("id", string(&event.id)),
        ("source", string(&event.source)),
        ("vendor", string(event.vendor.as_str())),
        ("kind", string(event.kind.as_str())),
        ("action", string(&event.action)),
        ("device", device),
        ("time_ms", int(event.time_ms)),
        ("properties", Box::new(CelList::from(properties))),
        ("attributes", attributes),
    ])
}

/// Unix milliseconds fit an `int` for the next 292 million years; past that, saturate.
fn int<'e>(u: u64) -> Boxed<'e> {
    Box::new(CelInt::from(i64::try_from(u).unwrap_or(i64::MAX)))
}

/// A twin as CEL, copied out of it (the twin is read under its shard's lock).
fn twin_value(twin: &Twin) -> Boxed<'static> {
    let owned = |s: Option<&String>| match s {
        Some(s) => Box::new(CelString::from(s.clone())) as Boxed<'static>,
        None => Box::new(CelNull),
    };
    let device = map([
        ("id", owned(Some(&twin.device.id))),
        ("product", owned(twin.device.product.as_ref())),
        ("name", owned(twin.device.name.as_ref())),
    ]);
    // Sorted by code then service: the first of a code is kept, as `props` does.
    let mut props: HashMap<CelMapKey<'static>, Boxed<'static>> = HashMap::new();
    for property in &twin.properties {
        props
            .entry(CelMapKey::from(property.code.to_string()))
            .or_insert_with(|| owned_value(&property.value));
    }
    map([
        (
            "online",
            twin.online.map_or_else(
                || Box::new(CelNull) as Boxed<'static>,
                |online| Box::new(CelBool::from(online)),
            ),
        ),
        ("last_seen_ms", int(twin.last_seen_ms)),
        (
            "online_changed_ms",
            twin.online_changed_ms
                .map_or_else(|| Box::new(CelNull) as Boxed<'static>, int),
        ),
        ("device", device),
        ("props", Box::new(CelMap::from(props))),
    ])
}

/// [`value`], copied rather than borrowed.
fn owned_value(value: &Value) -> Boxed<'static> {
    match value {
        Value::Text(s) => Box::new(CelString::from(s.clone())),
        Value::Json(json) => json_value(json.to_value()),
        Value::Null => Box::new(CelNull),
        Value::Boolean(b) => Box::new(CelBool::from(*b)),
        Value::Integer(i) => Box::new(CelInt::from(*i)),
        Value::Float(f) => Box::new(CelDouble::from(*f)),
    }
}

fn props_value(event: &Event) -> Boxed<'_> {
    let mut seen = BTreeSet::new();
    map(event
        .properties
        .iter()
        .filter(|p| seen.insert(p.code.as_str()))
        .map(|p| (p.code.as_str(), value(&p.value))))
}

fn value(value: &Value) -> Boxed<'_> {
    match value {
        Value::Null => Box::new(CelNull),
        Value::Boolean(b) => Box::new(CelBool::from(*b)),
        Value::Integer(i) => Box::new(CelInt::from(*i)),
        Value::Float(f) => Box::new(CelDouble::from(*f)),
        Value::Text(s) => string(s),
        Value::Json(json) => json_value(json.to_value()),
    }
}

/// A parsed JSON value as CEL: numbers that fit `int` are ints, others doubles (as in
/// [`Value`]'s own typing).
fn json_value<'e>(json: serde_json::Value) -> Boxed<'e> {
    match json {
        serde_json::Value::Null => Box::new(CelNull),
        serde_json::Value::Bool(b) => Box::new(CelBool::from(b)),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Box::new(CelInt::from(i)),
            None => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        },
        serde_json::Value::String(s) => Box::new(CelString::from(s)),
        serde_json::Value::Array(items) => Box::new(CelList::from(
            items.into_iter().map(json_value).collect::<Vec<_>>(),
        )),
        serde_json::Value::Object(entries) => {
            let entries: HashMap<CelMapKey<'e>, Boxed<'e>> = entries
                .into_iter()
                .map(|(k, v)| (CelMapKey::from(k), json_value(v)))
                .collect();
            Box::new(CelMap::from(entries))
        }
    }
}
