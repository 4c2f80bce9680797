//! `spate`: the broker (`spate serve`) and the command-line client, in one binary.
//!
//! This file holds the command line and its dispatch; each command lives in [`cli`].

mod cli;

use clap::{Parser, Subcommand};

use cli::cluster::ClusterCommand;
use cli::consume::ConsumeArgs;
use cli::group::GroupCommand;
use cli::produce::ProduceArgs;
use cli::serve::ServeArgs;
use cli::topic::TopicCommand;
use cli::{run_client, Bootstrap};

#[derive(Parser)]
#[command(name = "spate", version, about = "Spate: a thread-per-core streaming log broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker.
    Serve(ServeArgs),
    /// Create, list, describe, alter and delete topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Produce messages read from stdin, one per line.
    Produce(ProduceArgs),
    /// Print messages of a topic.
    Consume(ConsumeArgs),
    /// List and describe consumer groups; reset their offsets.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Check the machine, apply fixes, plan per-core layouts.
    Tune {
        #[command(subcommand)]
        command: spate_broker::tune::TuneCommand,
    },
    /// Cluster certificates and status.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Print PARTITION<TAB>EARLIEST<TAB>LATEST for each partition of a topic.
    Offsets {
        topic: String,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => cli::serve::serve(args),
        Command::Topic { command, bootstrap } => {
            run_client(&bootstrap.bootstrap, |client| cli::topic::topic(client, command))
        }
        Command::Produce(args) => {
            let bootstrap = args.bootstrap.bootstrap.clone();
            run_client(&bootstrap, |client| cli::produce::produce(client, args))
        }
        Command::Consume(args) => {
            let bootstrap = args.bootstrap.bootstrap.clone();
            run_client(&bootstrap, |client| cli::consume::consume(client, args))
        }
        Command::Tune { command } => spate_broker::tune::run(command),
        Command::Group { command, bootstrap } => {
            run_client(&bootstrap.bootstrap, |client| cli::group::group(client, command))
        }
        Command::Cluster { command: ClusterCommand::Certs { out, brokers }, .. } => {
            cli::cluster::certs(out, brokers)
        }
        Command::Cluster { command: ClusterCommand::Status { partitions }, bootstrap } => {
            run_client(&bootstrap.bootstrap, |client| cli::cluster::status(client, partitions))
        }
        Command::Offsets { topic, bootstrap } => {
            run_client(&bootstrap.bootstrap, |client| cli::offsets::offsets(client, topic))
        }
    };
    if let Err(message) = result {
        eprintln!("spate: {message}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand and every flag says what it is for in `--help` (positional names such
    /// as TOPIC speak for themselves).
    #[test]
    fn every_command_and_flag_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in command.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(name.clone());
                }
                walk(sub, &name, missing);
            }
            for arg in command.get_arguments() {
                let builtin = ["help", "version"].contains(&arg.get_id().as_str());
                if !arg.is_positional()
                    && !builtin
                    && !arg.is_hide_set()
                    && arg.get_help().is_none()
                {
                    missing.push(format!("{path} --{}", arg.get_id()));
                }
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "spate", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:?}");
    }
}
