//! What a command's `--format` template may ask for: the shape of its data, checked against the
//! template before anything is rendered, and the data itself turned into template values.
//!
//! docker renders Go structs, so `{{.Nope}}` fails whatever the image holds, while `{{.Config.
//! Labels.nope}}` (a map) prints `<no value>`. haul's data is JSON, where both are map keys; the
//! shapes here draw the same line: a field a [`Shape::Struct`] does not list is an error at
//! once, even with no image to render, and a key a [`Shape::Map`] lacks is not.

use std::collections::BTreeMap;
use std::sync::Arc;

use gotmpl::Value;
use gotmpl::parse::{Expr, ListNode, Node, PipeNode};

use super::shown;

/// The shape of a value a template can reach.
#[derive(Debug)]
pub enum Shape {
    Str,
    Int,
    Bool,
    /// A list of values of one shape (`range`, `index`, `join`).
    List(&'static Shape),
    /// Keys are data (labels, ports): any key may be asked for.
    Map,
    /// Fields known in advance; a missing one is filled with its zero value, as Go shows a
    /// struct's empty field.
    Struct(&'static [(&'static str, Shape)]),
    /// Not checked, shown as it comes.
    Any,
}

use Shape::{Any, Bool, Int, List, Map, Str, Struct};

/// A template asks for a field its data cannot have.
#[derive(Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    /// What the value the field was taken from is: `a string`, `a list`, or its fields.
    pub problem: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown field .{}: {}", self.field, self.problem)
    }
}

/// Checks every field a template takes, following `.` through `with` and `range` and `$` to the
/// top, against `root`. Fields of what functions return, and of variables bound to anything but
/// a field chain, are not checked.
pub fn check(
    tree: &ListNode,
    defines: &[(String, ListNode)],
    root: &Shape,
) -> Result<(), FieldError> {
    let mut walk = Walk {
        root,
        vars: Vec::new(),
        defines,
        depth: 0,
    };
    walk.list(tree, root)
}

struct Walk<'a> {
    root: &'a Shape,
    vars: Vec<(String, &'a Shape)>,
    defines: &'a [(String, ListNode)],
    /// `{{template}}` calls followed, so a template that calls itself ends the walk.
    depth: usize,
}

impl<'a> Walk<'a> {
    fn list(&mut self, list: &ListNode, dot: &'a Shape) -> Result<(), FieldError> {
        // Variables live until the end of the block that declared them, as in Go.
        let scope = self.vars.len();
        for node in &list.nodes {
            self.node(node, dot)?;
        }
        self.vars.truncate(scope);
        Ok(())
    }

    fn node(&mut self, node: &Node, dot: &'a Shape) -> Result<(), FieldError> {
        match node {
            Node::List(list) => self.list(list, dot),
            Node::Action(action) => {
                let shape = self.pipe(&action.pipe, dot)?;
                self.declare(&action.pipe, shape);
                Ok(())
            }
            Node::If(branch) => {
                self.pipe(&branch.pipe, dot)?;
                self.list(&branch.body, dot)?;
                self.else_body(&branch.else_body, dot)
            }
            Node::With(branch) => {
                let shape = self.pipe(&branch.pipe, dot)?;
                let scope = self.vars.len();
                self.declare(&branch.pipe, shape);
                self.list(&branch.body, shape)?;
                self.vars.truncate(scope);
                self.else_body(&branch.else_body, dot)
            }
            Node::Range(branch) => {
                let shape = self.pipe(&branch.pipe, dot)?;
                let element = match shape {
                    List(element) => element,
                    _ => &Any,
                };
                let scope = self.vars.len();
                match branch.pipe.decl.as_slice() {
                    [value] => self.vars.push((value.to_string(), element)),
                    [key, value] => {
                        self.vars.push((key.to_string(), &Any));
                        self.vars.push((value.to_string(), element));
                    }
                    _ => {}
                }
                self.list(&branch.body, element)?;
                self.vars.truncate(scope);
                self.else_body(&branch.else_body, dot)
            }
            Node::Template(call) => {
                let shape = match &call.pipe {
                    Some(pipe) => self.pipe(pipe, dot)?,
                    None => &Any,
                };
                if self.depth >= 8 {
                    return Ok(());
                }
                let Some((_, body)) = self.defines.iter().find(|(name, _)| *name == call.name)
                else {
                    return Ok(());
                };
                // A defined template sees only its own `.` and `$`, not the caller's variables.
                let vars = std::mem::take(&mut self.vars);
                let root = std::mem::replace(&mut self.root, shape);
                self.depth += 1;
                let result = self.list(body, shape);
                self.depth -= 1;
                self.root = root;
                self.vars = vars;
                result
            }
            Node::Text(_) | Node::Define(_) | Node::Break(_) | Node::Continue(_) => Ok(()),
        }
    }

    fn else_body(&mut self, body: &Option<ListNode>, dot: &'a Shape) -> Result<(), FieldError> {
        match body {
            Some(list) => self.list(list, dot),
            None => Ok(()),
        }
    }

    /// Binds `$x := pipeline` (or `$x = …`) to the pipeline's shape.
    fn declare(&mut self, pipe: &PipeNode, shape: &'a Shape) {
        for name in &pipe.decl {
            if pipe.is_assign {
                if let Some(var) = self.vars.iter_mut().rev().find(|(n, _)| n == name.as_str()) {
                    var.1 = &Any;
                }
            } else {
                self.vars.push((name.to_string(), shape));
            }
        }
    }

    /// The shape of what a pipeline yields: that of its value when it is one, else unchecked.
    fn pipe(&mut self, pipe: &PipeNode, dot: &'a Shape) -> Result<&'a Shape, FieldError> {
        let mut result: &'a Shape = &Any;
        for command in &pipe.commands {
            let mut shapes = Vec::with_capacity(command.args.len());
            for arg in &command.args {
                shapes.push(self.expr(arg, dot)?);
            }
            result = match (command.args.first(), shapes.as_slice()) {
                (Some(Expr::Identifier(..)), _) => &Any,
                (_, [only]) => only,
                _ => &Any,
            };
        }
        Ok(result)
    }

    fn expr(&mut self, expr: &Expr, dot: &'a Shape) -> Result<&'a Shape, FieldError> {
        match expr {
            Expr::Dot(_) => Ok(dot),
            Expr::Field(_, chain) => resolve(dot, chain),
            Expr::Variable(_, name, chain) => {
                let base = if name == "$" {
                    self.root
                } else {
                    self.vars
                        .iter()
                        .rev()
                        .find(|(n, _)| n == name.as_str())
                        .map_or(&Any, |(_, shape)| *shape)
                };
                resolve(base, chain)
            }
            Expr::Pipe(_, pipe) => self.pipe(pipe, dot),
            Expr::Chain(_, inner, chain) => {
                let base = self.expr(inner, dot)?;
                resolve(base, chain)
            }
            Expr::String(..) => Ok(&Str),
            Expr::Number(..) => Ok(&Int),
            Expr::Bool(..) => Ok(&Bool),
            Expr::Identifier(..) | Expr::Nil(_) => Ok(&Any),
        }
    }
}

fn resolve<'a>(
    mut shape: &'a Shape,
    chain: &[gotmpl::parse::SmolStr],
) -> Result<&'a Shape, FieldError> {
    let mut path = String::new();
    for name in chain {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(name);
        let problem = match shape {
            Struct(fields) => match fields.iter().find(|(field, _)| field == name) {
                Some((_, next)) => {
                    shape = next;
                    continue;
                }
                None => format!(
                    "the fields there are {}",
                    fields
                        .iter()
                        .map(|(field, _)| format!(".{field}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
            Map | Any => {
                shape = &Any;
                continue;
            }
            List(_) => "that is a list (use index or range)".to_owned(),
            Str => "that is a string".to_owned(),
            Int => "that is a number".to_owned(),
            Bool => "that is a boolean".to_owned(),
        };
        return Err(FieldError {
            field: path,
            problem,
        });
    }
    Ok(shape)
}

/// `json` as a template value of `shape`: strings marked (see [`shown`]), a struct's missing
/// fields filled with their zero values.
pub fn to_value(json: &serde_json::Value, shape: &Shape) -> Value {
    use serde_json::Value as Json;
    match (shape, json) {
        (Struct(fields), Json::Object(object)) => {
            let mut map: BTreeMap<Arc<str>, Value> = object
                .iter()
                .map(|(k, v)| {
                    let field = fields.iter().find(|(name, _)| name == k);
                    let value = to_value(v, field.map_or(&Any, |(_, s)| s));
                    (Arc::from(shown::mark(k).as_ref()), value)
                })
                .collect();
            for (name, field) in fields.iter() {
                map.entry(Arc::from(*name)).or_insert_with(|| zero(field));
            }
            Value::Map(Arc::new(map))
        }
        (Struct(_), Json::Null) => to_value(&Json::Object(Default::default()), shape),
        (List(_) | Map | Str | Int | Bool, Json::Null) => zero(shape),
        (List(element), Json::Array(items)) => {
            Value::List(items.iter().map(|v| to_value(v, element)).collect())
        }
        (_, json) => plain(json),
    }
}

/// Go's zero value of a field of this shape, as a struct shows it.
fn zero(shape: &Shape) -> Value {
    match shape {
        Str => Value::String(Arc::from("")),
        Int => Value::Int(0),
        Bool => Value::Bool(false),
        List(_) => Value::List(Arc::from(Vec::new())),
        Map => Value::Map(Arc::new(BTreeMap::new())),
        Struct(_) => to_value(&serde_json::Value::Null, shape),
        Any => Value::Nil,
    }
}

/// JSON as a template value, with no shape to follow.
fn plain(json: &serde_json::Value) -> Value {
    use serde_json::Value as Json;
    match json {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Int(i),
            (_, Some(u), _) => Value::Uint(u),
            (_, _, Some(f)) => Value::Float(f),
            _ => Value::Nil,
        },
        Json::String(s) => Value::String(Arc::from(shown::mark(s).as_ref())),
        Json::Array(items) => Value::List(items.iter().map(plain).collect()),
        Json::Object(object) => Value::Map(Arc::new(
            object
                .iter()
                .map(|(k, v)| (Arc::from(shown::mark(k).as_ref()), plain(v)))
                .collect(),
        )),
    }
}

/// A template value back as JSON, strings unmarked (the `json` function).
pub fn to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as Json;
    match value {
        Value::Nil | Value::Function(_) => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Uint(u) => Json::from(*u),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::String(s) => Json::String(shown::unmark(s)),
        Value::List(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(map) => Json::Object(
            map.iter()
                .map(|(k, v)| (shown::unmark(k), to_json(v)))
                .collect(),
        ),
    }
}

/// One row of `haul images`, as docker names its fields.
pub static IMAGE_ROW: Shape = Struct(&[
    ("ID", Str),
    ("Repository", Str),
    ("Tag", Str),
    ("Digest", Str),
    ("CreatedSince", Str),
    ("CreatedAt", Str),
    ("Size", Str),
    ("Containers", Str),
    ("SharedSize", Str),
    ("UniqueSize", Str),
    ("VirtualSize", Str),
    // haul's own: the config plus the compressed layers (docker's containerd store's CONTENT
    // SIZE), beside `Size`, the layers unpacked.
    ("CompressedSize", Str),
]);

/// docker's column headers for [`IMAGE_ROW`]'s fields, for `table TEMPLATE`.
pub static IMAGE_HEADERS: &[(&str, &str)] = &[
    ("ID", "IMAGE ID"),
    ("Repository", "REPOSITORY"),
    ("Tag", "TAG"),
    ("Digest", "DIGEST"),
    ("CreatedSince", "CREATED"),
    ("CreatedAt", "CREATED AT"),
    ("Size", "SIZE"),
    ("Containers", "CONTAINERS"),
    ("SharedSize", "SHARED SIZE"),
    ("UniqueSize", "UNIQUE SIZE"),
    ("VirtualSize", "VIRTUAL SIZE"),
    ("CompressedSize", "COMPRESSED SIZE"),
];

/// One row of `haul history`, as docker names its fields.
pub static HISTORY_ROW: Shape = Struct(&[
    ("ID", Str),
    ("CreatedSince", Str),
    ("CreatedAt", Str),
    ("CreatedBy", Str),
    ("Size", Str),
    ("CompressedSize", Str),
    ("Comment", Str),
]);

pub static HISTORY_HEADERS: &[(&str, &str)] = &[
    ("ID", "IMAGE"),
    ("CreatedSince", "CREATED"),
    ("CreatedAt", "CREATED AT"),
    ("CreatedBy", "CREATED BY"),
    ("Size", "SIZE"),
    ("CompressedSize", "COMPRESSED SIZE"),
    ("Comment", "COMMENT"),
];

/// docker's `Config` of an image: the OCI fields and docker's own.
const IMAGE_CONFIG: Shape = Struct(&[
    ("Hostname", Str),
    ("Domainname", Str),
    ("User", Str),
    ("AttachStdin", Bool),
    ("AttachStdout", Bool),
    ("AttachStderr", Bool),
    ("ExposedPorts", Map),
    ("Tty", Bool),
    ("OpenStdin", Bool),
    ("StdinOnce", Bool),
    ("Env", List(&Str)),
    ("Cmd", List(&Str)),
    ("Healthcheck", Any),
    ("ArgsEscaped", Bool),
    ("Image", Str),
    ("Volumes", Map),
    ("WorkingDir", Str),
    ("Entrypoint", List(&Str)),
    ("NetworkDisabled", Bool),
    ("MacAddress", Str),
    ("OnBuild", List(&Str)),
    ("Labels", Map),
    ("StopSignal", Str),
    ("StopTimeout", Any),
    ("Shell", List(&Str)),
]);

/// What `haul inspect` prints for one image.
pub static IMAGE_INSPECT: Shape = Struct(&[
    ("Id", Str),
    ("RepoTags", List(&Str)),
    ("RepoDigests", List(&Str)),
    ("Created", Str),
    ("Config", IMAGE_CONFIG),
    ("Architecture", Str),
    ("Variant", Str),
    ("Os", Str),
    ("Size", Int),
    ("CompressedSize", Int),
    ("SizeEstimated", Bool),
    ("RootFS", Struct(&[("Type", Str), ("Layers", List(&Str))])),
    // The config's own history, verbatim (its keys are lower case: created_by).
    ("History", List(&Map)),
]);

/// `haul info`'s template view.
pub static INFO: Shape = Struct(&[
    ("Version", Str),
    // docker info's name for where images live.
    ("DockerRootDir", Str),
    ("Images", Int),
    (
        "Store",
        Struct(&[
            ("Root", Str),
            ("Images", Int),
            ("Blobs", Int),
            ("BlobBytes", Int),
            ("PartialFiles", Int),
            ("PartialBytes", Int),
            ("ExtractedLayers", Int),
            ("ExtractedBytes", Int),
        ]),
    ),
    ("ConfigFile", Str),
    (
        "Config",
        Struct(&[
            ("MaxConcurrentDownloads", Int),
            ("MaxDownloadAttempts", Int),
            ("DownloadStallTimeout", Any),
            ("MaxRetryAfter", Any),
            ("ForeignLayerAllowedNetworks", List(&Str)),
            ("InsecureRegistries", List(&Str)),
            ("RegistryMirrors", Map),
            (
                "Proxies",
                Struct(&[
                    ("Source", Str),
                    ("HTTPProxy", Str),
                    ("HTTPSProxy", Str),
                    ("NoProxy", Str),
                ]),
            ),
        ]),
    ),
    ("CredentialsFile", Str),
]);

/// `haul version`'s data, as docker's `Client` section names it.
pub static VERSION: Shape = Struct(&[(
    "Client",
    Struct(&[
        ("Version", Str),
        ("GitCommit", Str),
        ("BuildTime", Str),
        ("RustVersion", Str),
        ("Os", Str),
        ("Arch", Str),
    ]),
)]);

#[cfg(test)]
mod tests {
    use super::*;

    fn check_src(src: &str, shape: &Shape) -> Result<(), FieldError> {
        let parser = gotmpl::parse::Parser::new(src, "{{", "}}").unwrap();
        let (tree, defines) = parser.parse().unwrap();
        let defines: Vec<(String, ListNode)> = defines
            .into_iter()
            .map(|d| (d.name.to_string(), d.body))
            .collect();
        check(&tree, &defines, shape)
    }

    #[test]
    fn known_fields_pass_and_unknown_ones_are_named() {
        let good = [
            "{{.Id}} {{.Architecture}}/{{.Os}}",
            "{{json .}}",
            "{{range .RepoTags}}{{.}}{{end}}",
            "{{with .Config}}{{.User}} {{.Labels.anything}}{{end}}",
            "{{index .Config.Labels \"a.b\"}} {{.Config.ExposedPorts}}",
            "{{range $i, $t := .RepoTags}}{{$i}}={{$t}} {{$.Id}}{{end}}",
            "{{$c := .Config}}{{$c.WorkingDir}}",
            "{{(index .RepoTags 0)}} {{len .RootFS.Layers}}",
            "{{define \"x\"}}{{.User}}{{end}}{{template \"x\" .Config}}",
            "{{range .History}}{{.created_by}}{{end}}",
        ];
        for src in good {
            assert_eq!(check_src(src, &IMAGE_INSPECT), Ok(()), "{src}");
        }
        let bad = [
            ("{{.Nope}}", "Nope"),
            ("{{.Config.Nope}}", "Config.Nope"),
            ("{{with .Config}}{{.Nope}}{{end}}", "Nope"),
            ("{{range .RepoTags}}{{.Nope}}{{end}}", "Nope"),
            ("{{.RepoTags.Nope}}", "RepoTags.Nope"),
            ("{{.Id.Nope}}", "Id.Nope"),
            ("{{$.Nope}}", "Nope"),
            ("{{$c := .Config}}{{$c.Nope}}", "Nope"),
            ("{{json .Nope}}", "Nope"),
            ("{{if .Nope}}x{{end}}", "Nope"),
            (
                "{{define \"x\"}}{{.Nope}}{{end}}{{template \"x\" .Config}}",
                "Nope",
            ),
        ];
        for (src, field) in bad {
            let err = check_src(src, &IMAGE_INSPECT).unwrap_err();
            assert_eq!(err.field, field, "{src}");
        }
        let err = check_src("{{.Repo}}", &IMAGE_ROW).unwrap_err();
        assert!(err.to_string().contains(".Repository"), "{err}");
    }

    #[test]
    fn a_template_calling_itself_ends_the_walk() {
        let src = "{{define \"x\"}}{{template \"x\" .}}{{end}}{{template \"x\" .}}";
        assert_eq!(check_src(src, &IMAGE_ROW), Ok(()));
    }

    #[test]
    fn structs_get_zero_values_and_maps_keep_their_keys() {
        let json = serde_json::json!({"Id": "sha256:1", "Config": {"Labels": {"a": "b"}}});
        let value = to_value(&json, &IMAGE_INSPECT);
        let config = value.field("Config").unwrap();
        assert_eq!(config.field("User").unwrap().as_str(), Some(""));
        assert_eq!(config.field("Entrypoint").unwrap().len(), Some(0));
        assert_eq!(
            config.field("Labels").unwrap().field("a").unwrap().as_str(),
            Some("b")
        );
        assert!(config.field("Labels").unwrap().field("nope").is_none());
        assert_eq!(to_json(&value)["Id"], "sha256:1");
    }
}
