//! Client subcommands of `nubo`: the argument definitions (one file per
//! noun), the dispatch, and the argument helpers the nouns share. Results
//! are shown by [`render`], errors and what to do about them by [`hints`].

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::bail;
use nubo_client::{Client, DEFAULT_ENDPOINT};

pub mod alias;
pub mod asyncq;
pub mod cluster;
pub mod dlq;
pub mod function;
pub mod hints;
pub mod invoke;
pub mod logs;
pub mod render;
pub mod token;
pub mod trigger;
pub mod upload;
pub mod version;

pub use alias::AliasCommand;
pub use asyncq::AsyncCommand;
pub use cluster::ClusterCommand;
pub use dlq::DlqCommand;
pub use function::FunctionCommand;
pub use hints::{code_name, report_error};
pub use invoke::InvokeArgs;
pub use logs::LogsArgs;
pub use token::TokenCommand;
pub use trigger::TriggerCommand;
pub use version::VersionCommand;

use hints::Subject;
use render::Out;

/// How results are printed (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// JSON on stdout, for scripts.
    Json,
}

/// Flags every client command takes: where the controllers are and how to
/// authenticate. [`GlobalArgs::client_config`] turns them into the
/// client's plain configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// Controller API endpoint; a comma-separated list names several
    /// controllers, tried in turn when one is down.
    #[arg(long, global = true, env = "NUBO_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// Bearer token. Without it, <config-dir>/token (written by `nubo up`) is used.
    #[arg(long, global = true, env = "NUBO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Directory holding the CLI's token file [default: $HOME/.config/nubo].
    #[arg(long, global = true, env = "NUBO_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
}

impl GlobalArgs {
    pub fn config_dir(&self) -> PathBuf {
        self.config_dir
            .clone()
            .unwrap_or_else(nubo_client::default_config_dir)
    }

    /// The client configuration these flags (and `NUBO_RETRY_SECS`) ask
    /// for: the endpoint list, the token from --token / NUBO_TOKEN or the
    /// config directory's token file, a retry warning on the terminal.
    pub fn client_config(&self) -> anyhow::Result<nubo_client::Config> {
        let endpoints = nubo_client::parse_endpoints(&self.endpoint)?;
        let token = nubo_client::load_token(self.token.as_deref(), &self.config_dir())?;
        Ok(nubo_client::Config {
            endpoints,
            token,
            secret: None,
            retry_budget: retry_budget_from_env(),
            attempt_timeout: attempt_timeout_from_env(),
            warn_on_retry: true,
        })
    }
}

/// `NUBO_ATTEMPT_TIMEOUT_MS` (how long one attempt of a short call waits
/// for one controller before trying the next), else the client's default.
fn attempt_timeout_from_env() -> std::time::Duration {
    std::env::var("NUBO_ATTEMPT_TIMEOUT_MS")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(std::time::Duration::from_millis)
        .unwrap_or(nubo_client::DEFAULT_ATTEMPT_TIMEOUT)
}

/// `NUBO_RETRY_SECS` (seconds a command keeps failing over between
/// controllers), else the client's default.
fn retry_budget_from_env() -> std::time::Duration {
    std::env::var("NUBO_RETRY_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(std::time::Duration::from_secs_f64)
        .unwrap_or(nubo_client::DEFAULT_RETRY_BUDGET)
}

#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Create, inspect, change and delete functions.
    #[command(subcommand)]
    Function(FunctionCommand),
    /// Publish and list immutable versions of a function.
    #[command(subcommand)]
    Version(VersionCommand),
    /// Manage aliases: named pointers to versions, with weighted routing.
    #[command(subcommand)]
    Alias(AliasCommand),
    /// Inspect and change the group of controllers.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Create, list and revoke API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Invoke a function and print its result on stdout.
    Invoke(InvokeArgs),
    /// Show a function's log lines (START / END / REPORT and its output).
    Logs(LogsArgs),
    /// Dead-letter queues of asynchronous invocations.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The asynchronous invocation queue.
    #[command(subcommand)]
    Async(AsyncCommand),
    /// Triggers: Kafka topics whose records run a function (event source
    /// mappings); `nubo trigger serve` runs them.
    #[command(subcommand)]
    Trigger(TriggerCommand),
}

/// Splits FUNCTION[:QUALIFIER].
pub fn split_target(t: &str) -> (String, String) {
    match t.split_once(':') {
        Some((f, q)) => (f.to_string(), q.to_string()),
        None => (t.to_string(), String::new()),
    }
}

/// `NAME[:QUALIFIER]` from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qualified {
    pub name: String,
    pub qualifier: Option<String>,
}

pub fn parse_qualified(s: &str) -> Result<Qualified, String> {
    let (name, qualifier) = match s.split_once(':') {
        Some((n, q)) => (n, Some(q)),
        None => (s, None),
    };
    if name.is_empty() {
        return Err(format!("{s:?}: the function name is empty"));
    }
    match qualifier {
        Some("") => Err(format!(
            "{s:?}: nothing after ':' (expected NAME:QUALIFIER)"
        )),
        Some(q) if q.contains(':') => Err(format!("{s:?}: more than one ':'")),
        q => Ok(Qualified {
            name: name.to_string(),
            qualifier: q.map(str::to_string),
        }),
    }
}

/// One `--env KEY=VALUE` item. The value may contain `=`.
pub fn parse_env_item(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, _)) if k.trim().is_empty() => {
            Err(format!("invalid --env item {s:?}: the key is empty"))
        }
        Some((k, v)) => Ok((k.to_string(), v.to_string())),
        None => Err(format!("invalid --env item {s:?}: expected KEY=VALUE")),
    }
}

/// One `--routing VERSION=WEIGHT` item; the weight is a share in [0, 1).
pub fn parse_routing_item(s: &str) -> Result<(String, f64), String> {
    let Some((v, w)) = s.split_once('=') else {
        return Err(format!(
            "invalid --routing item {s:?}: expected VERSION=WEIGHT"
        ));
    };
    let v = v.trim();
    if v.is_empty() {
        return Err(format!(
            "invalid --routing item {s:?}: the version is empty"
        ));
    }
    let weight: f64 = w
        .trim()
        .parse()
        .map_err(|_| format!("invalid --routing item {s:?}: the weight {w:?} is not a number"))?;
    if !(0.0..1.0).contains(&weight) {
        return Err(format!(
            "invalid --routing item {s:?}: the weight must be at least 0 and below 1"
        ));
    }
    Ok((v.to_string(), weight))
}

/// Collects `--env` items, refusing a key given twice (a silent "last wins"
/// would hide typos in long command lines).
pub fn env_map(items: &[(String, String)]) -> anyhow::Result<HashMap<String, String>> {
    let mut m = HashMap::new();
    for (k, v) in items {
        if m.insert(k.clone(), v.clone()).is_some() {
            bail!("--env key {k:?} is given more than once");
        }
    }
    Ok(m)
}

pub fn routing_map(items: &[(String, f64)]) -> anyhow::Result<HashMap<String, f64>> {
    let mut m = HashMap::new();
    for (v, w) in items {
        if m.insert(v.clone(), *w).is_some() {
            bail!("--routing version {v:?} is given more than once");
        }
    }
    let total: f64 = m.values().sum();
    if total >= 1.0 {
        bail!("--routing weights add up to {total}; they must stay below 1");
    }
    Ok(m)
}

pub async fn run_client(g: &GlobalArgs, cmd: ClientCommand) -> anyhow::Result<()> {
    if let ClientCommand::Cluster(ClusterCommand::WorkerSecret { cluster_secret }) = &cmd {
        return cluster::print_worker_secret(cluster_secret);
    }
    if let ClientCommand::Cluster(ClusterCommand::TriggerSecret { cluster_secret }) = &cmd {
        println!("{}", nubo_proto::trigger_secret(cluster_secret));
        return Ok(());
    }
    let cmd = match cmd {
        ClientCommand::Trigger(TriggerCommand::Serve(args)) => {
            return crate::roles::run_trigger(args).await
        }
        other => other,
    };
    let client = Client::from_config(g.client_config()?)?;
    hints::set_context(hints::ErrorContext {
        endpoints: client.endpoints().join(","),
        token_sent: client.has_token(),
        config_dir: g.config_dir(),
        subject: subject(&cmd),
    });
    let out = Out { format: g.output };
    match cmd {
        ClientCommand::Function(c) => function::run(&client, &out, c).await,
        ClientCommand::Version(c) => version::run(&client, &out, c).await,
        ClientCommand::Alias(c) => alias::run(&client, &out, c).await,
        ClientCommand::Cluster(c) => cluster::run(&client, &out, c).await,
        ClientCommand::Token(c) => token::run(&client, &out, c).await,
        ClientCommand::Invoke(a) => invoke::run(&client, &out, a).await,
        ClientCommand::Logs(a) => logs::run(&client, &out, a).await,
        ClientCommand::Dlq(c) => dlq::run(&client, &out, c).await,
        ClientCommand::Async(c) => asyncq::run(&client, &out, c).await,
        ClientCommand::Trigger(c) => trigger::run(&client, &out, c).await,
    }
}

/// What `cmd` is about, for the error hints.
fn subject(cmd: &ClientCommand) -> Subject {
    use alias::AliasCommand as A;
    use cluster::ClusterCommand as C;
    use dlq::DlqCommand as D;
    use function::FunctionCommand as F;
    use token::TokenCommand as T;
    use version::VersionCommand as V;
    match cmd {
        ClientCommand::Function(c) => match c {
            F::Create(a) => Subject::new("function create").function(&a.name),
            F::Get(a) => Subject::new("function get")
                .function(&a.name.name)
                .qualifier(a.name.qualifier.as_deref().or(a.qualifier.as_deref())),
            F::List(_) => Subject::new("function list"),
            F::UpdateCode(a) => Subject::new("function update-code").function(&a.name),
            F::UpdateConfig(a) => Subject::new("function update-config").function(&a.name),
            F::Delete(a) => Subject::new("function delete")
                .function(&a.name.name)
                .qualifier(a.name.qualifier.as_deref()),
        },
        ClientCommand::Version(c) => match c {
            V::Publish { name, .. } => Subject::new("version publish").function(name),
            V::List { name, .. } => Subject::new("version list").function(name),
        },
        ClientCommand::Alias(c) => match c {
            A::Create {
                function,
                alias,
                function_version,
                ..
            } => Subject::new("alias create")
                .function(function)
                .alias(alias)
                .qualifier(Some(function_version)),
            A::Get { function, alias } => Subject::new("alias get").function(function).alias(alias),
            A::Update {
                function,
                alias,
                function_version,
                ..
            } => Subject::new("alias update")
                .function(function)
                .alias(alias)
                .qualifier(function_version.as_deref()),
            A::Delete { function, alias } => {
                Subject::new("alias delete").function(function).alias(alias)
            }
            A::List {
                function,
                function_version,
            } => Subject::new("alias list")
                .function(function)
                .qualifier(function_version.as_deref()),
        },
        ClientCommand::Cluster(c) => Subject::new(match c {
            C::Status => "cluster status",
            C::Add { .. } => "cluster add",
            C::Promote { .. } => "cluster promote",
            C::Remove { .. } => "cluster remove",
            C::WorkerSecret { .. } => "cluster worker-secret",
            C::TriggerSecret { .. } => "cluster trigger-secret",
        }),
        ClientCommand::Token(c) => Subject::new(match c {
            T::Create { .. } => "token create",
            T::List => "token list",
            T::Revoke { .. } => "token revoke",
        }),
        ClientCommand::Invoke(a) => {
            let (function, qualifier) = split_target(&a.target);
            Subject::new("invoke")
                .function(&function)
                .qualifier(Some(&qualifier))
        }
        ClientCommand::Logs(a) => Subject::new("logs").function(&a.function),
        ClientCommand::Dlq(c) => match c {
            D::List { function } => Subject::new("dlq list").function(function),
            D::Get { function, .. } => Subject::new("dlq get").function(function),
            D::Redrive { function, .. } => Subject::new("dlq redrive").function(function),
            D::Purge { function } => Subject::new("dlq purge").function(function),
        },
        ClientCommand::Async(AsyncCommand::Status { function }) => {
            Subject::new("async status").function(function)
        }
        ClientCommand::Trigger(c) => {
            use trigger::{CreateCommand as K, TriggerCommand as G};
            match c {
                G::Create(K::Kafka { target, .. }) => {
                    Subject::new("trigger create kafka").function(&split_target(target).0)
                }
                G::List { function } => {
                    let s = Subject::new("trigger list");
                    match function {
                        Some(f) => s.function(f),
                        None => s,
                    }
                }
                G::Get { .. } => Subject::new("trigger get"),
                G::Enable { .. } => Subject::new("trigger enable"),
                G::Disable { .. } => Subject::new("trigger disable"),
                G::Update { .. } => Subject::new("trigger update"),
                G::Delete { .. } => Subject::new("trigger delete"),
                G::Serve(_) => Subject::new("trigger serve"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_items() {
        assert_eq!(
            parse_env_item("A=b=c").unwrap(),
            ("A".to_string(), "b=c".to_string())
        );
        assert_eq!(parse_env_item("A=").unwrap().1, "");
        let e = parse_env_item("NOEQUALS").unwrap_err();
        assert!(e.contains("\"NOEQUALS\""), "{e}");
        let e = parse_env_item("=v").unwrap_err();
        assert!(e.contains("\"=v\"") && e.contains("key is empty"), "{e}");
        let dup = env_map(&[("A".into(), "1".into()), ("A".into(), "2".into())]).unwrap_err();
        assert!(dup.to_string().contains("\"A\""), "{dup}");
    }

    #[test]
    fn routing_items() {
        assert_eq!(parse_routing_item("2=0.1").unwrap(), ("2".to_string(), 0.1));
        for bad in ["2", "=0.1", "2=abc", "2=1", "2=-0.1", "2=1.5"] {
            let e = parse_routing_item(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        let e = routing_map(&[("2".into(), 0.6), ("3".into(), 0.5)]).unwrap_err();
        assert!(e.to_string().contains("below 1"), "{e}");
    }

    #[test]
    fn qualified_names() {
        assert_eq!(
            parse_qualified("fn").unwrap(),
            Qualified {
                name: "fn".into(),
                qualifier: None
            }
        );
        let q = parse_qualified("fn:prod").unwrap();
        assert_eq!(
            (q.name.as_str(), q.qualifier.as_deref()),
            ("fn", Some("prod"))
        );
        assert_eq!(
            parse_qualified("fn:$LATEST").unwrap().qualifier.as_deref(),
            Some("$LATEST")
        );
        for bad in ["", ":1", "fn:", "a:b:c"] {
            let e = parse_qualified(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    /// The hint subject of every leaf command is that command, with the
    /// function (and alias) it names.
    #[test]
    fn subjects_name_the_command() {
        use clap::Parser;
        let cases: &[(&str, &[&str])] = &[
            (
                "function create",
                &["f", "--runtime", "r", "--handler", "h", "--code", "."],
            ),
            ("function get", &["f:3"]),
            ("function list", &[]),
            ("function update-code", &["f", "--code", "."]),
            ("function update-config", &["f", "--memory", "256"]),
            ("function delete", &["f:3"]),
            ("version publish", &["f"]),
            ("version list", &["f"]),
            ("alias create", &["f", "a", "--version", "3"]),
            ("alias get", &["f", "a"]),
            ("alias update", &["f", "a", "--version", "3"]),
            ("alias delete", &["f", "a"]),
            ("alias list", &["f"]),
            ("cluster status", &[]),
            ("cluster add", &["4", "h:1"]),
            ("cluster promote", &["4"]),
            ("cluster remove", &["4"]),
            ("cluster worker-secret", &["--cluster-secret", "s"]),
            ("token create", &["--scope", "admin"]),
            ("token list", &[]),
            ("token revoke", &["t"]),
            ("invoke", &["f:3"]),
            ("logs", &["f"]),
            ("dlq list", &["f"]),
            ("dlq get", &["f", "r"]),
            ("dlq redrive", &["f", "--all"]),
            ("dlq purge", &["f"]),
            ("async status", &["f"]),
            (
                "trigger create kafka",
                &["f", "--brokers", "h:1", "--topic", "t"],
            ),
            ("trigger list", &["f"]),
        ];
        for (command, args) in cases {
            let argv: Vec<&str> = std::iter::once("nubo")
                .chain(command.split(' '))
                .chain(args.iter().copied())
                .collect();
            let cli = crate::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            let crate::Command::Client(cmd) = cli.command else {
                panic!("{command}: not a client command");
            };
            let s = subject(&cmd);
            assert_eq!(s.command, *command);
            let names_function = !command.starts_with("cluster")
                && !command.starts_with("token")
                && *command != "function list";
            assert_eq!(
                s.function.as_deref(),
                names_function.then_some("f"),
                "{command}"
            );
            if command.starts_with("alias") && *command != "alias list" {
                assert_eq!(s.alias.as_deref(), Some("a"), "{command}");
            }
        }
        let cli = crate::Cli::try_parse_from(["nubo", "invoke", "f"]).unwrap();
        let crate::Command::Client(cmd) = cli.command else {
            panic!("not a client command");
        };
        assert_eq!(subject(&cmd).qualifier, None);
    }

    #[test]
    fn cli_parses() {
        use clap::Parser;
        let cli = crate::Cli::try_parse_from([
            "nubo",
            "-o",
            "json",
            "function",
            "create",
            "f",
            "--runtime",
            "python3.12",
            "--handler",
            "app.h",
            "--code",
            ".",
            "--env",
            "A=1",
            "--env",
            "B=2",
            "--network",
            "none",
        ])
        .unwrap();
        assert_eq!(cli.global.output, OutputFormat::Json);
        let crate::Command::Client(ClientCommand::Function(FunctionCommand::Create(a))) =
            cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!(a.config.env.len(), 2);
        assert_eq!(a.config.network, Some(function::Network::NoNetwork));
        let err =
            crate::Cli::try_parse_from(["nubo", "function", "update-config", "f", "--env", "oops"])
                .unwrap_err()
                .to_string();
        assert!(err.contains("\"oops\""), "{err}");
        assert!(crate::Cli::try_parse_from([
            "nubo",
            "alias",
            "update",
            "f",
            "a",
            "--routing",
            "2=0.1",
            "--clear-routing"
        ])
        .is_err());
        let cli =
            crate::Cli::try_parse_from(["nubo", "invoke", "f", "--async", "--ordering-key", "k"])
                .unwrap();
        let crate::Command::Client(ClientCommand::Invoke(a)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(a.ordering_key.as_deref(), Some("k"));
        assert!(
            crate::Cli::try_parse_from(["nubo", "invoke", "f", "--ordering-key", "k"]).is_err(),
            "an ordering key needs --async"
        );
    }
}
