namespace Parsl.Jobs

open System

/// Which scaling strategy a block-provider executor uses (Parsl's `Config.strategy`).
type StrategyKind =
    /// Start `InitBlocks` on the first poll, then never scale (Parsl's `none`).
    | NoScaling
    /// Scale out under load; scale in only when no task is outstanding (Parsl's `simple`).
    | Simple
    /// As `Simple`, and also scale idle blocks in while tasks remain (Parsl's `htex_auto_scale`).
    | HtexAutoScale

/// A snapshot of one executor, as the strategy sees it. Time arrives in `Now`.
type StrategyInput =
    { Kind: StrategyKind
      /// True on the executor's first poll: `InitBlocks` are started then.
      FirstPoll: bool
      /// Tasks queued or running on the executor.
      ActiveTasks: int
      RunningBlocks: int
      PendingBlocks: int
      /// Workers per node (Parsl's `workers_per_node`).
      TasksPerNode: int
      NodesPerBlock: int
      InitBlocks: int
      MinBlocks: int
      MaxBlocks: int
      Parallelism: float
      MaxIdleTime: TimeSpan
      Now: DateTime
      /// When the executor became idle (no outstanding task), if it is.
      IdleSince: DateTime option }

/// What to do with blocks.
type StrategyDecision =
    /// Leave the blocks as they are.
    | NoChange
    /// Start this many blocks.
    | ScaleOut of blocks: int
    /// Stop this many blocks; with `Some idle`, only blocks idle for longer than that and without tasks.
    | ScaleIn of blocks: int * onlyIdleLongerThan: TimeSpan option

/// The strategy's decision and the idle timer to keep for the next poll.
type StrategyOutput =
    { Decision: StrategyDecision
      IdleSince: DateTime option }

/// Parsl's scaling strategy (`parsl/jobs/strategy.py`) as a pure function of a snapshot.
[<RequireQualifiedAccess>]
module Strategy =
    /// Decides, for one executor, whether to start or stop blocks.
    let decide (i: StrategyInput) : StrategyOutput =
        let keep idle d = { Decision = d; IdleSince = idle }
        if i.FirstPoll then
            keep None (if i.InitBlocks > 0 then ScaleOut(min i.InitBlocks (max i.MaxBlocks i.InitBlocks)) else NoChange)
        else
            match i.Kind with
            | NoScaling -> keep i.IdleSince NoChange
            | Simple
            | HtexAutoScale ->
                let activeBlocks = i.RunningBlocks + i.PendingBlocks
                let perBlock = max 1 (i.TasksPerNode * i.NodesPerBlock)
                let activeSlots = activeBlocks * perBlock
                let idle = if i.ActiveTasks > 0 then None else i.IdleSince
                if i.ActiveTasks = 0 then
                    if activeBlocks <= i.MinBlocks then keep idle NoChange
                    else
                        match idle with
                        | None -> keep (Some i.Now) NoChange
                        | Some since when i.Now - since > i.MaxIdleTime ->
                            keep idle (ScaleIn(activeBlocks - i.MinBlocks, None))
                        | Some _ -> keep idle NoChange
                elif float activeSlots / float i.ActiveTasks < i.Parallelism then
                    if activeBlocks >= i.MaxBlocks then keep idle NoChange
                    else
                        let excessSlots = ceil (float i.ActiveTasks * i.Parallelism - float activeSlots)
                        let excessBlocks = int (ceil (excessSlots / float perBlock))
                        let n = min excessBlocks (i.MaxBlocks - activeBlocks)
                        keep idle (if n > 0 then ScaleOut n else NoChange)
                elif activeSlots = 0 then
                    keep idle (if activeBlocks < i.MaxBlocks then ScaleOut 1 else NoChange)
                elif activeSlots > i.ActiveTasks && i.Kind = HtexAutoScale && activeBlocks > i.MinBlocks then
                    let excessSlots = floor (float activeSlots - float i.ActiveTasks * i.Parallelism)
                    let excessBlocks = int (floor (excessSlots / float perBlock))
                    let n = min excessBlocks (activeBlocks - i.MinBlocks)
                    keep idle (if n > 0 then ScaleIn(n, Some i.MaxIdleTime) else NoChange)
                else
                    keep idle NoChange
