//! `lumen rules check|test`, as `promtool check rules` and `promtool test rules`.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum RulesCommand {
    /// Check rule files (Prometheus' format): exit 0 when every file loads, else print what is wrong, with
    /// file, line, group and rule.
    Check {
        /// The expressions are LogQL (Loki's rule files) instead of PromQL.
        #[arg(long)]
        logql: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run rule unit tests in promtool's format (rule_files, input_series, alert_rule_test,
    /// promql_expr_test): exit 0 when every test passes.
    Test {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub fn run(cmd: RulesCommand) -> anyhow::Result<()> {
    let mut out = String::new();
    let (ok, what) = match cmd {
        RulesCommand::Check { logql, files } => {
            let lang = if logql { ruler::rulefmt::Lang::LogQL } else { ruler::rulefmt::Lang::PromQL };
            (ruler::check_files(&files, lang, &mut out), "rule files did not check")
        }
        RulesCommand::Test { files } => (ruler::test_files(&files, &mut out), "rule tests failed"),
    };
    #[allow(clippy::print_stdout)] // the report is this command's output
    {
        print!("{out}");
    }
    if ok { Ok(()) } else { Err(anyhow::anyhow!("{what}")) }
}
