//! The fault schedule: what a seed does to the world (crashes, hangs, partitions, loss, clock
//! jumps, sick servers, load) and what the simulated operator asks, and the heal after it.

use super::driver::{Res, Sim};
use super::fleet::Ev;
use super::world::MAX_CLOCK_SKEW_MS;
use rejuv_core::cluster::OperatorCommand;
use rejuv_core::types::{InstanceId, ServerId};

impl Sim {
    fn random_server(&mut self) -> ServerId {
        let ids: Vec<ServerId> = self.f.agents.keys().cloned().collect();
        self.f.rng.pick(&ids).expect("servers").clone()
    }

    pub fn fault(&mut self) -> Res {
        let t = self.f.t;
        let server = self.random_server();
        match self.f.rng.below(100) {
            0..=7 => {
                if self.shell.is_some() && self.f.crash_after_next_step.is_none() {
                    let downtime = self.f.rng.range(200, 20_000);
                    if self.f.rng.chance(0.4) {
                        self.f
                            .world("controller will crash right after its next commit".into());
                        self.f.crash_after_next_step = Some(downtime);
                    } else {
                        self.crash(downtime, "between steps")?;
                    }
                }
            }
            8..=17 => {
                let d = self.f.rng.range(500, 10_000);
                let a = self.f.agents.get_mut(&server).expect("known");
                if a.host_up && a.process_up {
                    a.advance_mem(t);
                    a.process_up = false;
                    a.instances.clear();
                    self.f.at(
                        t + d,
                        Ev::AgentRestart {
                            server: server.clone(),
                        },
                    );
                    self.f
                        .world(format!("agent on {server} crashes (its instances die)"));
                }
            }
            18..=25 => {
                let d = self.f.rng.range(2_000, 40_000);
                self.f.agents.get_mut(&server).expect("known").hung_until = t + d;
                self.f.world(format!("agent on {server} hangs for {d} ms"));
            }
            26..=33 => {
                let d = self.f.rng.range(2_000, 30_000);
                self.f
                    .agents
                    .get_mut(&server)
                    .expect("known")
                    .partitioned_until = t + d;
                self.f.world(format!(
                    "{server} is cut off from the controller for {d} ms"
                ));
            }
            34..=39 => {
                let revive = self
                    .f
                    .rng
                    .chance(0.5)
                    .then(|| self.f.rng.range(20_000, 120_000));
                let a = self.f.agents.get_mut(&server).expect("known");
                if a.host_up {
                    a.advance_mem(t);
                    a.host_up = false;
                    a.process_up = false;
                    a.instances.clear();
                    if let Some(d) = revive {
                        self.f.at(
                            t + d,
                            Ev::HostUp {
                                server: server.clone(),
                            },
                        );
                    }
                    self.f
                        .world(format!("{server} dies (revives after {revive:?} ms)"));
                }
            }
            40..=47 => {
                self.f.net_loss = 0.1 + 0.4 * self.f.rng.unit();
                let d = self.f.rng.range(5_000, 60_000);
                self.f.loss_until = t + d;
                self.f.world(format!(
                    "network loses {:.0}% of messages for {d} ms",
                    self.f.net_loss * 100.0
                ));
            }
            48..=53 => {
                let d = self.f.rng.range(5_000, 40_000);
                self.f.slow_until = t + d;
                self.f
                    .world(format!("network slow (0.2-3 s per message) for {d} ms"));
            }
            54..=61 => {
                let d = self.f.rng.range(3_000, 40_000);
                self.f.sync_blocked_until = t + d;
                self.f
                    .world(format!("traffic adapter cannot reach the proxy for {d} ms"));
            }
            62..=67 => {
                let jump = self.f.rng.range(60_000, MAX_CLOCK_SKEW_MS as u64) as i64
                    * if self.f.rng.chance(0.5) { 1 } else { -1 };
                if self.f.rng.chance(0.6) {
                    self.f.ctl_offset_ms =
                        (self.f.ctl_offset_ms + jump).clamp(-MAX_CLOCK_SKEW_MS, MAX_CLOCK_SKEW_MS);
                    self.f.offset_span.0 = self.f.offset_span.0.min(self.f.ctl_offset_ms);
                    self.f.offset_span.1 = self.f.offset_span.1.max(self.f.ctl_offset_ms);
                    self.f.world(format!(
                        "controller wall clock jumps {jump:+} ms (now {:+} ms off)",
                        self.f.ctl_offset_ms
                    ));
                } else {
                    let a = self.f.agents.get_mut(&server).expect("known");
                    a.clock_offset_ms =
                        (a.clock_offset_ms + jump).clamp(-MAX_CLOCK_SKEW_MS, MAX_CLOCK_SKEW_MS);
                    self.f
                        .world(format!("{server}'s wall clock jumps {jump:+} ms"));
                }
            }
            68..=75 => {
                let d = self.f.rng.range(1_000, 8_000);
                let ids: Vec<InstanceId> =
                    self.f.agents[&server].instances.keys().cloned().collect();
                if let Some(id) = self.f.rng.pick(&ids).cloned() {
                    let a = self.f.agents.get_mut(&server).expect("known");
                    if let Some(i) = a.instances.get_mut(&id) {
                        i.crashed_until = t + d;
                    }
                    self.f
                        .world(format!("instance {id} on {server} crashes; back in {d} ms"));
                }
            }
            76..=81 => {
                let d = self.f.rng.range(10_000, 60_000);
                self.f.agents.get_mut(&server).expect("known").sick_until = t + d;
                self.f.world(format!(
                    "instances started on {server} in the next {d} ms never turn healthy"
                ));
            }
            82..=89 => {
                let high = self.f.rng.chance(0.5);
                self.f.agents.get_mut(&server).expect("known").load1 = if high { 5.0 } else { 0.5 };
                self.f.world(format!(
                    "{server}'s load goes {}",
                    if high { "up" } else { "down" }
                ));
            }
            _ => self.operator(server)?,
        }
        Ok(())
    }

    fn operator(&mut self, server: ServerId) -> Res {
        if self.shell.is_none() {
            return Ok(());
        }
        // Releases go preferably to servers that are held or failed, so they do come back.
        let held: Vec<ServerId> = self
            .cluster()
            .servers
            .values()
            .filter(|s| s.maintenance || !s.on_list())
            .map(|s| s.id.clone())
            .collect();
        let command = match self.f.rng.below(20) {
            0 => OperatorCommand::Pause,
            1 | 2 => OperatorCommand::Resume,
            3..=5 => OperatorCommand::Maintenance { server, on: true },
            6..=10 => OperatorCommand::Maintenance {
                server: self.f.rng.pick(&held).cloned().unwrap_or(server),
                on: false,
            },
            11..=15 => OperatorCommand::Rejuvenate {
                server,
                force: false,
            },
            _ => OperatorCommand::Rejuvenate {
                server,
                force: true,
            },
        };
        // As the engine: a request that does not fit is refused before it is applied.
        let now = self.f.now();
        let Some(shell) = &mut self.shell else {
            return Ok(());
        };
        if let Err(refusal) =
            shell.operator("sim-operator".into(), command.clone(), now, &mut self.f)
        {
            self.f
                .world(format!("operator request {command:?} refused: {refusal}"));
        }
        Ok(())
    }

    /// Every fault ends, aging stops, loads fall: the quiet part of the schedule.
    pub fn heal(&mut self) {
        self.f.healed = true;
        self.f.crash_after_next_step = None;
        let t = self.f.t;
        self.f.loss_until = 0;
        self.f.slow_until = 0;
        self.f.sync_blocked_until = 0;
        let ids: Vec<ServerId> = self.f.agents.keys().cloned().collect();
        for id in ids {
            let a = self.f.agents.get_mut(&id).expect("known");
            a.hung_until = 0;
            a.partitioned_until = 0;
            a.sick_until = 0;
            a.advance_mem(t);
            a.leak_per_s = 0.0;
            a.load1 = 0.5;
            if !a.host_up {
                self.f.at(t, Ev::HostUp { server: id });
            } else if !a.process_up {
                self.f.at(t, Ev::AgentRestart { server: id });
            }
        }
        if self.shell.is_none() {
            self.f.at(t, Ev::ControllerRestart);
        }
        self.f.world("every fault healed; quiet from here".into());
    }
}
