//! `dds-gateway rollout plan|start|status|list|watch|pause|resume|cancel|approve|retry|skip`:
//! the command-line client of `RolloutService`. `watch` prints each wave's progress as a bar at
//! every change and ends with a table of the instances.

use std::fmt::Write as _;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::client::{Outcome, Target, connect, describe_status};
use crate::pb;
use crate::pb::rollout_service_client::RolloutServiceClient;

/// Which instances (every condition given must hold).
#[derive(Debug, Clone, Args)]
pub struct SelectorArgs {
    /// A region to list (repeat for several; the gateway's default region when absent).
    #[arg(long = "region")]
    pub regions: Vec<String>,
    /// A current engine version, e.g. 4.4 (repeat for several).
    #[arg(long = "engine-version")]
    pub engine_versions: Vec<String>,
    /// An instance id (repeat for several).
    #[arg(long = "instance")]
    pub instances: Vec<String>,
    /// An instance id pattern, e.g. 'dds-bp1*' (repeat for several).
    #[arg(long = "pattern")]
    pub patterns: Vec<String>,
    /// A tag the instance carries, KEY=VALUE (repeat: all of them).
    #[arg(long = "tag", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// The instances' resource group.
    #[arg(long)]
    pub resource_group: Option<String>,
    /// The target engine version, e.g. 5.0.
    #[arg(long)]
    pub version: String,
}

/// What to do.
#[derive(Debug, Clone, Subcommand)]
pub enum RolloutCommand {
    /// Preview: which instances would be upgraded, which are excluded and why, and the plan hash.
    Plan {
        #[command(flatten)]
        selector: SelectorArgs,
    },
    /// Start a rollout.
    Start {
        #[command(flatten)]
        selector: SelectorArgs,
        /// The hash `plan` printed: the rollout starts only if the fleet still matches it.
        #[arg(long)]
        plan_hash: Option<String>,
        /// Wave sizes in order, numbers or percents, e.g. 1,5,24 or 10%,100% (default: one wave).
        #[arg(long, value_delimiter = ',', value_parser = parse_share)]
        waves: Vec<Share>,
        /// Upgrades under way at once per wave: N or N% of the wave.
        #[arg(long, value_parser = parse_share)]
        max_parallel: Option<Share>,
        /// Failures tolerated (the rollout stops when they exceed it): N or N% (default 0).
        #[arg(long, value_parser = parse_share)]
        max_failures: Option<Share>,
        /// Wait after each wave, e.g. 10m.
        #[arg(long)]
        soak: Option<String>,
        /// Each wave after the first waits for `rollout approve`.
        #[arg(long)]
        approval: bool,
        /// Upgrade in the instances' maintenance window instead of now.
        #[arg(long)]
        maintenance_window: bool,
        /// Why (recorded and audited).
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Show a rollout.
    Status { rollout_id: String },
    /// List rollouts.
    List,
    /// Follow a rollout until it ends: a progress bar per wave, then a summary table.
    Watch { rollout_id: String },
    /// No new sends; upgrades under way go on.
    Pause {
        rollout_id: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    Resume {
        rollout_id: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Stop for good (upgrades under way finish).
    Cancel {
        rollout_id: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Open the gate of the wave that waits for approval.
    Approve {
        rollout_id: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Try a failed instance again (never a second upgrade: the same idempotency key).
    Retry {
        rollout_id: String,
        instance: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Skip a failed or pending instance.
    Skip {
        rollout_id: String,
        instance: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
}

/// A number, or a percentage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    Count(i32),
    Percent(i32),
}

fn parse_share(text: &str) -> Result<Share, String> {
    let bad = || format!("expected a number or a percent such as 5 or 10%, got {text:?}");
    match text.strip_suffix('%') {
        Some(p) => p.trim().parse().map(Share::Percent).map_err(|_| bad()),
        None => text.trim().parse().map(Share::Count).map_err(|_| bad()),
    }
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

impl SelectorArgs {
    fn selector(&self) -> pb::Selector {
        pb::Selector {
            region_ids: self.regions.clone(),
            engine_versions: self.engine_versions.clone(),
            instance_ids: self.instances.clone(),
            instance_patterns: self.patterns.clone(),
            tags: self
                .tags
                .iter()
                .map(|(key, value)| pb::Tag {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            resource_group_id: self.resource_group.clone().unwrap_or_default(),
        }
    }
}

/// How long one call may take (a watch: until the rollout ends, within the gateway's bound).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
const WATCH_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Runs `command` against the gateway; `print` gets the watch's output as it comes.
pub async fn run(target: Target, command: RolloutCommand, mut print: impl FnMut(&str)) -> Outcome {
    match call(&target, command, &mut print).await {
        Ok(text) => Outcome::Answered(text),
        Err(problem) => Outcome::Failed(problem),
    }
}

async fn client<T>(
    target: &Target,
    timeout: Duration,
    message: T,
) -> Result<
    (
        RolloutServiceClient<tonic::transport::Channel>,
        tonic::Request<T>,
    ),
    String,
> {
    let (channel, request) = connect(target, timeout, message).await?;
    Ok((RolloutServiceClient::new(channel), request))
}

async fn call(
    target: &Target,
    command: RolloutCommand,
    print: &mut impl FnMut(&str),
) -> Result<String, String> {
    let failed = |status: tonic::Status| describe_status(&status);
    let control = |rollout_id: String, comment: String| pb::RolloutControlRequest {
        rollout_id,
        comment,
    };
    match command {
        RolloutCommand::Plan { selector } => {
            let message = pb::PlanRolloutRequest {
                selector: Some(selector.selector()),
                target_engine_version: selector.version.clone(),
            };
            let (mut c, request) = client(target, CALL_TIMEOUT, message).await?;
            let plan = c.plan_rollout(request).await.map_err(failed)?.into_inner();
            Ok(describe_plan(&plan))
        }
        RolloutCommand::Start {
            selector,
            plan_hash,
            waves,
            max_parallel,
            max_failures,
            soak,
            approval,
            maintenance_window,
            comment,
        } => {
            let (max_parallel, max_parallel_percent) = split(max_parallel);
            let (max_failures, max_failures_percent) = split(max_failures);
            let message = pb::StartRolloutRequest {
                plan_hash: plan_hash.unwrap_or_default(),
                selector: Some(selector.selector()),
                target_engine_version: selector.version.clone(),
                waves: waves
                    .into_iter()
                    .map(|w| pb::WaveSpec {
                        size_or_percent: Some(match w {
                            Share::Count(n) => pb::wave_spec::SizeOrPercent::Size(n),
                            Share::Percent(p) => pb::wave_spec::SizeOrPercent::Percent(p),
                        }),
                    })
                    .collect(),
                max_parallel,
                max_parallel_percent,
                max_failures,
                max_failures_percent,
                soak: soak.unwrap_or_default(),
                approval_required: approval,
                switch_mode: if maintenance_window {
                    pb::SwitchMode::MaintenanceWindow
                } else {
                    pb::SwitchMode::Unspecified
                } as i32,
                comment,
            };
            let (mut c, request) = client(target, CALL_TIMEOUT, message).await?;
            let rollout = c.start_rollout(request).await.map_err(failed)?.into_inner();
            Ok(describe_rollout(&rollout))
        }
        RolloutCommand::Status { rollout_id } => {
            let (mut c, request) =
                client(target, CALL_TIMEOUT, pb::GetRolloutRequest { rollout_id }).await?;
            let rollout = c.get_rollout(request).await.map_err(failed)?.into_inner();
            Ok(describe_rollout(&rollout))
        }
        RolloutCommand::List => {
            let (mut c, request) =
                client(target, CALL_TIMEOUT, pb::ListRolloutsRequest::default()).await?;
            let all = c.list_rollouts(request).await.map_err(failed)?.into_inner();
            let mut out = String::new();
            for r in &all.rollouts {
                let done = r
                    .instances
                    .iter()
                    .filter(|i| i.state() == pb::InstanceState::Done)
                    .count();
                let _ = writeln!(
                    out,
                    "{}  {:<26} target {}  {done}/{} done  {} failed  created {} by {:?}",
                    r.rollout_id,
                    r.state().as_str_name(),
                    r.target_engine_version,
                    r.instances.len(),
                    r.failures,
                    r.create_time,
                    r.created_by,
                );
            }
            Ok(out)
        }
        RolloutCommand::Watch { rollout_id } => {
            let (mut c, request) = client(
                target,
                WATCH_TIMEOUT,
                pb::WatchRolloutRequest { rollout_id },
            )
            .await?;
            let mut stream = c.watch_rollout(request).await.map_err(failed)?.into_inner();
            let mut last = None;
            loop {
                match stream.message().await {
                    Ok(Some(rollout)) => {
                        print(&progress(&rollout));
                        last = Some(rollout);
                    }
                    Ok(None) => break,
                    Err(status) => return Err(describe_status(&status)),
                }
            }
            Ok(last.map(|r| summary(&r)).unwrap_or_default())
        }
        RolloutCommand::Pause {
            rollout_id,
            comment,
        } => {
            let (mut c, request) =
                client(target, CALL_TIMEOUT, control(rollout_id, comment)).await?;
            let r = c.pause_rollout(request).await.map_err(failed)?.into_inner();
            Ok(describe_rollout(&r))
        }
        RolloutCommand::Resume {
            rollout_id,
            comment,
        } => {
            let (mut c, request) =
                client(target, CALL_TIMEOUT, control(rollout_id, comment)).await?;
            let r = c
                .resume_rollout(request)
                .await
                .map_err(failed)?
                .into_inner();
            Ok(describe_rollout(&r))
        }
        RolloutCommand::Cancel {
            rollout_id,
            comment,
        } => {
            let (mut c, request) =
                client(target, CALL_TIMEOUT, control(rollout_id, comment)).await?;
            let r = c
                .cancel_rollout(request)
                .await
                .map_err(failed)?
                .into_inner();
            Ok(describe_rollout(&r))
        }
        RolloutCommand::Approve {
            rollout_id,
            comment,
        } => {
            let (mut c, request) =
                client(target, CALL_TIMEOUT, control(rollout_id, comment)).await?;
            let r = c
                .approve_rollout(request)
                .await
                .map_err(failed)?
                .into_inner();
            Ok(describe_rollout(&r))
        }
        RolloutCommand::Retry {
            rollout_id,
            instance,
            comment,
        } => {
            let message = pb::RolloutInstanceRequest {
                rollout_id,
                db_instance_id: instance,
                comment,
            };
            let (mut c, request) = client(target, CALL_TIMEOUT, message).await?;
            let r = c
                .retry_rollout_instance(request)
                .await
                .map_err(failed)?
                .into_inner();
            Ok(describe_rollout(&r))
        }
        RolloutCommand::Skip {
            rollout_id,
            instance,
            comment,
        } => {
            let message = pb::RolloutInstanceRequest {
                rollout_id,
                db_instance_id: instance,
                comment,
            };
            let (mut c, request) = client(target, CALL_TIMEOUT, message).await?;
            let r = c
                .skip_rollout_instance(request)
                .await
                .map_err(failed)?
                .into_inner();
            Ok(describe_rollout(&r))
        }
    }
}

fn split(share: Option<Share>) -> (Option<i32>, Option<i32>) {
    match share {
        Some(Share::Count(n)) => (Some(n), None),
        Some(Share::Percent(p)) => (None, Some(p)),
        None => (None, None),
    }
}

fn describe_plan(plan: &pb::RolloutPlan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "plan_hash: {}", plan.plan_hash);
    let _ = writeln!(
        out,
        "target: {}  eligible: {}  excluded: {}",
        plan.target_engine_version,
        plan.eligible.len(),
        plan.excluded.len()
    );
    for i in &plan.eligible {
        let _ = writeln!(
            out,
            "  eligible  {:<24} {:<14} {:<5} {:<9} {}",
            i.db_instance_id,
            i.region_id,
            i.engine_version,
            i.db_instance_type,
            i.warnings.join("; ")
        );
    }
    for i in &plan.excluded {
        let _ = writeln!(
            out,
            "  excluded  {:<24} {:<14} {:<5} {}",
            i.db_instance_id, i.region_id, i.engine_version, i.reason
        );
    }
    out
}

fn describe_rollout(r: &pb::Rollout) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "rollout_id: {}", r.rollout_id);
    let _ = writeln!(out, "state: {}", r.state().as_str_name());
    if !r.waiting_reason.is_empty() {
        let _ = writeln!(out, "reason: {}", r.waiting_reason);
    }
    let _ = writeln!(out, "target: {}", r.target_engine_version);
    let _ = writeln!(out, "plan_hash: {}", r.plan_hash);
    let _ = writeln!(out, "failures: {} (max {})", r.failures, r.max_failures);
    out.push_str(&progress(r));
    out
}

fn bar(done: usize, total: usize) -> String {
    const WIDTH: usize = 20;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(WIDTH - filled))
}

/// One line per wave: a bar of finished instances, counts and the wave's state and gate.
fn progress(r: &pb::Rollout) -> String {
    let mut out = format!(
        "{} {} {}\n",
        r.rollout_id,
        r.state().as_str_name(),
        r.waiting_reason
    );
    for wave in &r.waves {
        let of = |s: pb::InstanceState| {
            r.instances
                .iter()
                .filter(|i| i.wave == wave.index && i.state() == s)
                .count()
        };
        let total = r.instances.iter().filter(|i| i.wave == wave.index).count();
        let (done, failed, skipped, upgrading) = (
            of(pb::InstanceState::Done),
            of(pb::InstanceState::Failed),
            of(pb::InstanceState::Skipped),
            of(pb::InstanceState::Upgrading),
        );
        let mut gate = String::new();
        if !wave.soak_until.is_empty() && wave.state() == pb::WaveState::Soaking {
            gate = format!(" soak until {}", wave.soak_until);
        }
        if !wave.approved_by.is_empty() {
            gate = format!(
                " approved by {:?}: {}",
                wave.approved_by, wave.approval_comment
            );
        }
        let _ = writeln!(
            out,
            "  wave {} {} {done}/{total} done, {upgrading} upgrading, {failed} failed, {skipped} skipped  {}{gate}",
            wave.index,
            bar(done + failed + skipped, total),
            wave.state().as_str_name(),
        );
    }
    out
}

/// The last state, as a table of instances.
fn summary(r: &pb::Rollout) -> String {
    let mut out = format!(
        "rollout {} ended {}\n{:<24} {:<5} {:<26} {:<28} {}\n",
        r.rollout_id,
        r.state().as_str_name(),
        "INSTANCE",
        "WAVE",
        "STATE",
        "ALIBABA CODE",
        "MESSAGE"
    );
    for i in &r.instances {
        let _ = writeln!(
            out,
            "{:<24} {:<5} {:<26} {:<28} {}",
            i.db_instance_id,
            i.wave,
            i.state().as_str_name(),
            i.alibaba_code,
            i.message
        );
    }
    for i in &r.excluded {
        let _ = writeln!(
            out,
            "{:<24} {:<5} {:<26} {:<28} excluded: {}",
            i.db_instance_id, "-", "EXCLUDED", "", i.reason
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_numbers_or_percents() {
        assert_eq!(parse_share("5"), Ok(Share::Count(5)));
        assert_eq!(parse_share("10%"), Ok(Share::Percent(10)));
        assert!(parse_share("ten").is_err());
        assert_eq!(parse_tag("env=prod"), Ok(("env".into(), "prod".into())));
        assert!(parse_tag("env").is_err());
    }

    #[test]
    fn bars_fill_with_finished_instances() {
        assert_eq!(bar(0, 4), format!("[{}]", "-".repeat(20)));
        assert_eq!(bar(2, 4), format!("[{}{}]", "#".repeat(10), "-".repeat(10)));
        assert_eq!(bar(4, 4), format!("[{}]", "#".repeat(20)));
    }
}
