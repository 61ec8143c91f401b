namespace Parsl.Dashboard

open System
open System.Text
open Microsoft.Data.Sqlite
open Parsl.Monitoring

/// The dashboard's pages, rendered on the server from the database (pure functions of the rows). A page of a run
/// still going refreshes its main part every two seconds; a one-file report holds the same sections.
[<RequireQualifiedAccess>]
module Pages =
    let private enc = Charts.enc

    /// Every state, in the order a task meets them.
    let states = [ "pending"; "launched"; "running"; "running_ended"; "joining"; "fail_retryable"; "exec_done"; "memo_done"; "failed"; "dep_fail" ]

    let private style =
        """
body { font-family: system-ui, sans-serif; margin: 0; color: #222; }
header { background: #263238; color: #fff; padding: 8px 16px; }
header a { color: #cfd8dc; margin-right: 14px; text-decoration: none; }
header a.here { color: #fff; font-weight: bold; }
main { padding: 12px 16px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
td, th { border: 1px solid #ddd; padding: 3px 8px; font-size: 13px; text-align: left; }
th { background: #eceff1; }
.status-running { color: #1e88e5; } .status-completed { color: #43a047; } .status-died { color: #e53935; }
.state { font-weight: bold; }
.label, .axis, .legend { font-size: 11px; }
.cause { color: #b71c1c; font-family: monospace; white-space: pre-wrap; }
.note, .empty { color: #777; }
"""

    let private script =
        """
(function () {
  if (document.body.dataset.live !== 'true') return;
  setInterval(function () {
    var u = new URL(location.href); u.searchParams.set('fragment', '1');
    fetch(u, { credentials: 'same-origin' }).then(function (r) { return r.ok ? r.text() : null; }).then(function (html) {
      if (html === null) return;
      var m = document.getElementById('main'); m.innerHTML = html;
      var live = m.querySelector('[data-live]');
      if (live && live.dataset.live !== 'true') location.reload();
    });
  }, 2000);
})();
"""

    /// A whole page around `body`.
    let layout (title: string) (run: string option) (here: string) (live: bool) (body: string) =
        let nav =
            match run with
            | None -> "<a href=\"/\" class=\"here\">Workflows</a>"
            | Some r ->
                let link (path: string) (name: string) =
                    sprintf "<a href=\"/workflow/%s%s\"%s>%s</a>" (Uri.EscapeDataString r) path (if path = here then " class=\"here\"" else "") name
                String.concat "" [
                    "<a href=\"/\">Workflows</a>"
                    link "" "Overview"; link "/tasks" "Tasks"; link "/failures" "Failures"; link "/dag" "Task graph"
                    link "/resources" "Resources"; link "/report.html" "Report" ]
        sprintf "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>%s</title><style>%s</style></head><body data-live=\"%b\"><header>%s</header><main id=\"main\">%s</main><script>%s</script></body></html>"
            (enc title) style live nav body script

    /// The live marker inside a fragment, so that the page reloads once the run ends.
    let private liveMark (live: bool) = sprintf "<span hidden data-live=\"%b\"></span>" live

    let private time (s: string) = if isNull s then "" else enc s

    /// The list of workflows.
    let workflows (ws: WorkflowView list) =
        let sb = StringBuilder("<h1>Workflows</h1><table id=\"workflows\"><tr><th>workflow</th><th>run</th><th>status</th><th>began</th><th>completed</th><th>tasks done</th><th>tasks failed</th><th>host</th></tr>")
        for w in ws do
            sb.AppendFormat(
                "<tr class=\"workflow-row\" data-run=\"{0}\"><td><a href=\"/workflow/{1}\">{2}</a></td><td>{0}</td><td class=\"status-{3}\">{3}</td><td>{4}</td><td>{5}</td><td>{6}</td><td>{7}</td><td>{8}</td></tr>",
                enc w.RunId, Uri.EscapeDataString w.RunId, enc w.Name, w.Status, time w.Began, time w.Completed, w.TasksCompleted, w.TasksFailed, enc w.Host)
            |> ignore
        if ws.IsEmpty then sb.Append("<tr><td colspan=\"8\" class=\"empty\">No workflows in this database.</td></tr>") |> ignore
        sb.Append("</table>").ToString()

    let private summary (w: WorkflowView) (tasks: TaskView list) =
        let counts = Queries.stateCounts tasks
        let sb = StringBuilder()
        sb.AppendFormat("<h1>{0} <small class=\"status-{1}\" id=\"workflow-status\">{1}</small></h1>", enc w.Name, w.Status) |> ignore
        sb.AppendFormat("<p>run <code>{0}</code> on {1} by {2}, began {3}{4}; run directory <code>{5}</code></p>",
                        enc w.RunId, enc w.Host, enc w.User, time w.Began, (if isNull w.Completed then "" else ", completed " + time w.Completed), enc w.RunDir) |> ignore
        sb.Append("<table id=\"counts\"><tr><th>state</th><th>tasks</th></tr>") |> ignore
        for s in states do
            sb.AppendFormat("<tr><td class=\"state\" style=\"color:{0}\">{1}</td><td class=\"count\" id=\"count-{1}\">{2}</td></tr>", Charts.colour s, s, Map.tryFind s counts |> Option.defaultValue 0) |> ignore
        sb.AppendFormat("<tr><th>all</th><td id=\"count-all\">{0}</td></tr></table>", tasks.Length) |> ignore
        sb.ToString()

    let private appsTable (tasks: TaskView list) =
        let sb = StringBuilder("<table id=\"apps\"><tr><th>app</th><th>tasks</th><th>done</th><th>failed</th><th>mean s</th><th>max s</th></tr>")
        for a in Queries.apps tasks do
            sb.AppendFormat("<tr class=\"app-row\"><td>{0}</td><td>{1}</td><td>{2}</td><td>{3}</td><td>{4:0.###}</td><td>{5:0.###}</td></tr>", enc a.App, a.Tasks, a.Done, a.Failed, a.MeanSeconds, a.MaxSeconds) |> ignore
        sb.Append("</table>").ToString()

    let private outputLinks (run: string) (t: TaskView) (report: bool) =
        [ if not (isNull t.Stdout) then
              if report then yield sprintf "stdout: <code>%s</code>" (enc t.Stdout)
              else yield sprintf "<a class=\"output\" href=\"/workflow/%s/task/%d/stdout\">stdout</a>" (Uri.EscapeDataString run) t.TaskId
          if not (isNull t.Stderr) then
              if report then yield sprintf "stderr: <code>%s</code>" (enc t.Stderr)
              else yield sprintf "<a class=\"output\" href=\"/workflow/%s/task/%d/stderr\">stderr</a>" (Uri.EscapeDataString run) t.TaskId ]
        |> String.concat " "

    /// One run's overview: counts by state, tasks per state over time, the Gantt chart of tries, per-app figures.
    let overview (conn: SqliteConnection) (w: WorkflowView) =
        let tasks = Queries.tasks conn w.RunId
        let tries = Queries.tries conn w.RunId None
        let series = Queries.statesOverTime 300 (Queries.statuses conn w.RunId)
        String.concat "" [
            liveMark (w.Status = "running")
            summary w tasks
            "<h2>Tasks per state over time</h2>"; Charts.statesOverTime series
            "<h2>Tries (Gantt)</h2>"; Charts.gantt tries DateTime.UtcNow 500
            "<h2>Apps</h2>"; appsTable tasks ]

    let private taskLink (run: string) (report: bool) (id: int) =
        if report then sprintf "<a href=\"#task-%d\">%d</a>" id id
        else sprintf "<a href=\"/workflow/%s/task/%d\">%d</a>" (Uri.EscapeDataString run) id id

    /// Every task.
    let tasks (conn: SqliteConnection) (w: WorkflowView) (report: bool) =
        let ts = Queries.tasks conn w.RunId
        let sb = StringBuilder(liveMark (w.Status = "running"))
        sb.AppendFormat("<h1>Tasks of {0}</h1><table id=\"tasks\"><tr><th>task</th><th>app</th><th>executor</th><th>state</th><th>invoked</th><th>returned</th><th>failures</th><th>depends on</th><th>output</th></tr>", enc w.Name) |> ignore
        for t in ts |> List.truncate 5000 do
            sb.AppendFormat("<tr class=\"task-row\" id=\"task-{0}\" data-state=\"{3}\"><td>{1}</td><td>{2}</td><td>{4}</td><td class=\"state\" style=\"color:{5}\">{3}</td><td>{6}</td><td>{7}</td><td>{8}</td><td>{9}</td><td>{10}</td></tr>",
                            t.TaskId, taskLink w.RunId report t.TaskId, enc t.App, t.State, enc t.Executor, Charts.colour t.State, time t.Invoked, time t.Returned,
                            t.FailCount, String.Join(", ", t.Depends |> List.map (taskLink w.RunId report)), outputLinks w.RunId t report) |> ignore
        if ts.Length > 5000 then sb.AppendFormat("<p class=\"note\">First 5000 of {0} tasks shown.</p>", ts.Length) |> ignore
        sb.Append("</table>").ToString()

    let private cause (y: TryView) =
        if isNull y.FailType && isNull y.FailMessage then ""
        else sprintf "<span class=\"cause\">%s: %s</span>" (enc y.FailType) (enc y.FailMessage)

    /// Failed tasks with their cause (the last try's exception, or the dependency that failed) and output.
    let failures (conn: SqliteConnection) (w: WorkflowView) (report: bool) =
        let ts = Queries.tasks conn w.RunId |> List.filter (fun t -> t.State = "failed" || t.State = "dep_fail")
        let tries = Queries.tries conn w.RunId None |> List.groupBy (fun y -> y.TaskId) |> dict
        let sb = StringBuilder(liveMark (w.Status = "running"))
        sb.AppendFormat("<h1>Failed tasks of {0}</h1><table id=\"failures\"><tr><th>task</th><th>app</th><th>state</th><th>tries</th><th>cause</th><th>output</th></tr>", enc w.Name) |> ignore
        for t in ts do
            let mine = match tries.TryGetValue t.TaskId with | true, ys -> ys | _ -> []
            let why =
                match mine |> List.sortBy (fun y -> y.TryId) |> List.tryLast with
                | Some y when not (isNull y.FailMessage) -> cause y
                | _ when t.State = "dep_fail" ->
                    sprintf "<span class=\"cause\">dependency failed: %s</span>" (String.Join(", ", t.Depends |> List.map (taskLink w.RunId report)))
                | _ -> ""
            sb.AppendFormat("<tr class=\"failure-row\" data-task=\"{0}\"><td>{1}</td><td>{2}</td><td class=\"state\" style=\"color:{3}\">{4}</td><td>{5}</td><td>{6}</td><td>{7}</td></tr>",
                            t.TaskId, taskLink w.RunId report t.TaskId, enc t.App, Charts.colour t.State, t.State, mine.Length, why, outputLinks w.RunId t report) |> ignore
        if ts.IsEmpty then sb.Append("<tr><td colspan=\"6\" class=\"empty\">No failed tasks.</td></tr>") |> ignore
        sb.Append("</table>").ToString()

    /// One task: its details, its state history, its tries with their causes, its resource use.
    let task (conn: SqliteConnection) (w: WorkflowView) (id: int) =
        match Queries.tasks conn w.RunId |> List.tryFind (fun t -> t.TaskId = id) with
        | None -> None
        | Some t ->
            let sb = StringBuilder(liveMark (w.Status = "running"))
            sb.AppendFormat("<h1>Task {0}: {1} <small class=\"state\" id=\"task-state\" style=\"color:{2}\">{3}</small></h1>", t.TaskId, enc t.App, Charts.colour t.State, t.State) |> ignore
            sb.AppendFormat("<p>executor {0}; invoked {1}; returned {2}; failures {3}; depends on {4} {5}</p>", enc t.Executor, time t.Invoked, time t.Returned, t.FailCount,
                            String.Join(", ", t.Depends |> List.map (taskLink w.RunId false)), outputLinks w.RunId t false) |> ignore
            sb.Append("<h2>States</h2><table id=\"task-statuses\"><tr><th>state</th><th>try</th><th>time</th></tr>") |> ignore
            for s in Queries.statuses conn w.RunId |> List.filter (fun s -> s.TaskId = id) do
                sb.AppendFormat("<tr><td class=\"state\" style=\"color:{0}\">{1}</td><td>{2}</td><td>{3}</td></tr>", Charts.colour s.State, s.State, s.TryId, time s.Timestamp) |> ignore
            sb.Append("</table><h2>Tries</h2><table id=\"task-tries\"><tr><th>try</th><th>host</th><th>block</th><th>launched</th><th>running</th><th>returned</th><th>cause</th></tr>") |> ignore
            for y in Queries.tries conn w.RunId (Some id) do
                sb.AppendFormat("<tr><td>{0}</td><td>{1}</td><td>{2}</td><td>{3}</td><td>{4}</td><td>{5}</td><td>{6}</td></tr>", y.TryId, enc y.Hostname, enc y.BlockId, time y.Launched, time y.Running, time y.Returned, cause y) |> ignore
            sb.Append("</table><h2>Resident memory</h2>") |> ignore
            sb.Append(Charts.memory (Queries.resources conn w.RunId (Some id))) |> ignore
            Some(sb.ToString())

    /// The task graph, coloured by state.
    let dag (conn: SqliteConnection) (w: WorkflowView) =
        let ts = Queries.tasks conn w.RunId
        liveMark (w.Status = "running") + sprintf "<h1>Task graph of %s</h1>" (enc w.Name) + Charts.dag ts 1000

    /// Resource use over time, per try, and the managers and blocks.
    let resources (conn: SqliteConnection) (w: WorkflowView) =
        let samples = Queries.resources conn w.RunId None
        let sb = StringBuilder(liveMark (w.Status = "running"))
        sb.AppendFormat("<h1>Resources of {0}</h1><h2>Resident memory of tries</h2>", enc w.Name) |> ignore
        sb.Append(Charts.memory samples) |> ignore
        sb.Append("<h2>CPU time per try</h2><table id=\"cpu\"><tr><th>task</th><th>try</th><th>samples</th><th>user s</th><th>system s</th><th>max resident MB</th></tr>") |> ignore
        for (task, tryId), ss in samples |> List.groupBy (fun s -> s.TaskId, s.TryId) do
            sb.AppendFormat("<tr class=\"cpu-row\"><td>{0}</td><td>{1}</td><td>{2}</td><td>{3:0.###}</td><td>{4:0.###}</td><td>{5:0.#}</td></tr>", task, tryId, ss.Length,
                            ss |> List.map (fun s -> s.CpuUser) |> List.max, ss |> List.map (fun s -> s.CpuSystem) |> List.max,
                            (ss |> List.map (fun s -> s.MemoryResident) |> List.max) / 1048576.0) |> ignore
        sb.Append("</table><h2>Managers</h2><table id=\"nodes\"><tr><th>host</th><th>manager</th><th>block</th><th>workers</th><th>cpus</th><th>memory GB</th><th>active</th><th>seen</th></tr>") |> ignore
        for n in Queries.nodes conn w.RunId do
            sb.AppendFormat("<tr class=\"node-row\"><td>{0}</td><td>{1}</td><td>{2}</td><td>{3}</td><td>{4}</td><td>{5:0.#}</td><td>{6}</td><td>{7}</td></tr>", enc n.Hostname, enc n.Uid, enc n.BlockId, n.WorkerCount, n.CpuCount,
                            float n.TotalMemory / 1073741824.0, n.Active, time n.Timestamp) |> ignore
        sb.Append("</table><h2>Blocks</h2><table id=\"blocks\"><tr><th>executor</th><th>block</th><th>job</th><th>status</th><th>time</th></tr>") |> ignore
        for b in Queries.blocks conn w.RunId do
            sb.AppendFormat("<tr class=\"block-row\"><td>{0}</td><td>{1}</td><td>{2}</td><td>{3}</td><td>{4}</td></tr>", enc b.Executor, enc b.BlockId, enc b.JobId, enc b.Status, time b.Timestamp) |> ignore
        sb.Append("</table>").ToString()

    /// One self-contained HTML file of a run: overview, failures, task graph, resources and every task.
    let report (conn: SqliteConnection) (w: WorkflowView) =
        let body =
            String.concat "<hr>" [
                overview conn w
                failures conn w true
                dag conn w
                resources conn w
                tasks conn w true ]
        sprintf "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Parsl report: %s</title><style>%s</style></head><body data-live=\"false\"><header>Parsl.NET report of %s (%s), written %s</header><main>%s</main></body></html>"
            (enc w.Name) style (enc w.Name) (enc w.RunId) (ParslFormat.time DateTime.UtcNow) body
