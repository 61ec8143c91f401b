namespace Parsl.Dashboard

open System
open System.Net
open System.Text
open Parsl.Monitoring

/// Plain SVG charts (pure functions of the rows): no script and no fetch from elsewhere, so they work in a
/// one-file report and on machines with no internet access.
[<RequireQualifiedAccess>]
module Charts =
    let enc (s: string) = WebUtility.HtmlEncode(if isNull s then "" else s)

    /// Each state's colour.
    let colour (state: string) =
        match state with
        | "pending" -> "#9e9e9e"
        | "launched" -> "#64b5f6"
        | "running" -> "#1e88e5"
        | "running_ended" -> "#5c6bc0"
        | "exec_done" -> "#43a047"
        | "memo_done" -> "#26a69a"
        | "failed" -> "#e53935"
        | "dep_fail" -> "#fb8c00"
        | "fail_retryable" -> "#f4511e"
        | "joining" -> "#8e24aa"
        | _ -> "#795548"

    let private f (x: float) = x.ToString("0.##", Globalization.CultureInfo.InvariantCulture)

    /// A Gantt chart of tries: one bar per try from launch (or start) to return, coloured by outcome; a try still
    /// running reaches `nowUtc`. At most `limit` rows are drawn.
    let gantt (tries: TryView list) (nowUtc: DateTime) (limit: int) =
        let shown = tries |> List.filter (fun t -> not (isNull t.Launched)) |> List.truncate limit
        match shown with
        | [] -> "<p class=\"empty\">No tries yet.</p>"
        | _ ->
            let t (s: string) = ParslFormat.parseTime s
            let start (y: TryView) = t y.Launched
            let ends (y: TryView) = if isNull y.Returned then nowUtc else t y.Returned
            let t0 = shown |> List.map start |> List.min
            let t1 = shown |> List.map ends |> List.max
            let span = max 1e-6 (t1 - t0).TotalSeconds
            let rowH, left, width = 14, 150, 700
            let sb = StringBuilder()
            let h = shown.Length * rowH + 30
            sb.AppendFormat("<svg class=\"gantt\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\">", left + width + 20, h) |> ignore
            shown
            |> List.iteri (fun i y ->
                let x = float left + (start y - t0).TotalSeconds / span * float width
                let w = max 2.0 ((ends y - start y).TotalSeconds / span * float width)
                let state =
                    if isNull y.Returned then "running"
                    elif isNull y.FailType && isNull y.FailMessage then "exec_done"
                    else "failed"
                let yy = i * rowH + 4
                sb.AppendFormat("<text x=\"4\" y=\"{0}\" class=\"label\">task {1} try {2} {3}</text>", yy + 10, y.TaskId, y.TryId, enc y.App) |> ignore
                sb.AppendFormat(
                    "<rect class=\"gantt-bar state-{0}\" data-task=\"{1}\" data-try=\"{2}\" x=\"{3}\" y=\"{4}\" width=\"{5}\" height=\"{6}\" fill=\"{7}\"><title>task {1} try {2} ({8}): {9} s{10}</title></rect>",
                    state, y.TaskId, y.TryId, f x, yy, f w, rowH - 3, colour state, enc y.App, f (ends y - start y).TotalSeconds,
                    (if state = "failed" then ": " + enc y.FailMessage else ""))
                |> ignore)
            sb.AppendFormat("<text x=\"{0}\" y=\"{1}\" class=\"axis\">0 s</text><text x=\"{2}\" y=\"{1}\" class=\"axis\" text-anchor=\"end\">{3} s</text>", left, h - 6, left + width, f span) |> ignore
            sb.Append("</svg>") |> ignore
            if tries.Length > limit then sb.AppendFormat("<p class=\"note\">First {0} of {1} tries shown.</p>", limit, tries.Length) |> ignore
            sb.ToString()

    /// Lines of tasks per state over time.
    let statesOverTime (series: (float * Map<string, int>) list) =
        match series with
        | [] -> "<p class=\"empty\">No state changes yet.</p>"
        | _ ->
            let states = series |> List.collect (fun (_, m) -> m |> Map.toList |> List.map fst) |> List.distinct
            let tmax = max 1e-6 (series |> List.map fst |> List.max)
            let vmax = max 1 (series |> List.collect (fun (_, m) -> m |> Map.toList |> List.map snd) |> List.max)
            let w, h, left = 700.0, 200.0, 40.0
            let sb = StringBuilder()
            sb.AppendFormat("<svg class=\"states-chart\" width=\"{0}\" height=\"{1}\">", f (w + left + 150.0), f (h + 30.0)) |> ignore
            sb.AppendFormat("<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"#999\"/>", f left, f h, f (left + w)) |> ignore
            sb.AppendFormat("<text x=\"0\" y=\"12\" class=\"axis\">{0}</text><text x=\"{1}\" y=\"{2}\" class=\"axis\" text-anchor=\"end\">{3} s</text>", vmax, f (left + w), f (h + 20.0), f tmax) |> ignore
            states
            |> List.iteri (fun i s ->
                // Steps: a count holds until the next change.
                let x t = f (left + t / tmax * w)
                let y v = f (h - float v / float vmax * h)
                let values = series |> List.map (fun (t, m) -> t, Map.tryFind s m |> Option.defaultValue 0)
                let pts =
                    values
                    |> List.pairwise
                    |> List.collect (fun ((_, v0), (t1, v1)) -> [ sprintf "%s,%s" (x t1) (y v0); sprintf "%s,%s" (x t1) (y v1) ])
                    |> List.append [ (let t, v = values.Head in sprintf "%s,%s" (x t) (y v)) ]
                sb.AppendFormat("<polyline class=\"series series-{0}\" fill=\"none\" stroke=\"{1}\" stroke-width=\"2\" points=\"{2}\"/>", s, colour s, String.Join(" ", pts)) |> ignore
                sb.AppendFormat("<text x=\"{0}\" y=\"{1}\" fill=\"{2}\" class=\"legend\">{3}</text>", f (left + w + 10.0), 14 + 16 * i, colour s, s) |> ignore)
            sb.Append("</svg>").ToString()

    /// The task graph in layers by depth, each task a circle coloured by its state, edges from dependencies.
    let dag (tasks: TaskView list) (limit: int) =
        let shown = tasks |> List.truncate limit
        match shown with
        | [] -> "<p class=\"empty\">No tasks yet.</p>"
        | _ ->
            let depth = Queries.depths shown
            let layers = shown |> List.groupBy (fun t -> depth[t.TaskId]) |> List.sortBy fst
            let pos = Collections.Generic.Dictionary<int, float * float>()
            for d, ts in layers do
                ts |> List.iteri (fun i t -> pos[t.TaskId] <- (60.0 + float d * 120.0, 30.0 + float i * 36.0))
            let width = 120.0 + float (layers |> List.map fst |> List.max) * 120.0 + 60.0
            let height = 60.0 + float (layers |> List.map (fun (_, ts) -> ts.Length) |> List.max) * 36.0
            let sb = StringBuilder()
            sb.AppendFormat("<svg class=\"dag\" width=\"{0}\" height=\"{1}\">", f width, f height) |> ignore
            for t in shown do
                for d in t.Depends do
                    match pos.TryGetValue d with
                    | true, (x1, y1) ->
                        let x2, y2 = pos[t.TaskId]
                        sb.AppendFormat("<line class=\"dag-edge\" x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{3}\" stroke=\"#bbb\"/>", f x1, f y1, f x2, f y2) |> ignore
                    | _ -> ()
            for t in shown do
                let x, y = pos[t.TaskId]
                sb.AppendFormat(
                    "<g class=\"dag-node state-{0}\" data-task=\"{1}\"><circle cx=\"{2}\" cy=\"{3}\" r=\"12\" fill=\"{4}\"><title>task {1} {5}: {0}</title></circle><text x=\"{2}\" y=\"{6}\" text-anchor=\"middle\" class=\"label\">{1}</text></g>",
                    t.State, t.TaskId, f x, f y, colour t.State, enc t.App, f (y + 26.0))
                |> ignore
            sb.Append("</svg>") |> ignore
            if tasks.Length > limit then sb.AppendFormat("<p class=\"note\">First {0} of {1} tasks shown.</p>", limit, tasks.Length) |> ignore
            sb.ToString()

    /// Resident memory over time, one line per try.
    let memory (samples: ResourceView list) =
        match samples with
        | [] -> "<p class=\"empty\">No resource samples (the thread pool records none, as in Parsl).</p>"
        | _ ->
            let t (s: ResourceView) = ParslFormat.parseTime s.Timestamp
            let t0 = samples |> List.map t |> List.min
            let tmax = max 1e-6 (samples |> List.map (fun s -> (t s - t0).TotalSeconds) |> List.max)
            let vmax = max 1.0 (samples |> List.map (fun s -> s.MemoryResident) |> List.max)
            let w, h, left = 700.0, 200.0, 60.0
            let sb = StringBuilder()
            sb.AppendFormat("<svg class=\"memory-chart\" width=\"{0}\" height=\"{1}\">", f (w + left + 20.0), f (h + 30.0)) |> ignore
            sb.AppendFormat("<text x=\"0\" y=\"12\" class=\"axis\">{0} MB</text><text x=\"{1}\" y=\"{2}\" class=\"axis\" text-anchor=\"end\">{3} s</text>", f (vmax / 1048576.0), f (left + w), f (h + 20.0), f tmax) |> ignore
            for (task, tryId), ss in samples |> List.groupBy (fun s -> s.TaskId, s.TryId) do
                let pts = ss |> List.map (fun s -> sprintf "%s,%s" (f (left + (t s - t0).TotalSeconds / tmax * w)) (f (h - s.MemoryResident / vmax * h)))
                let pts = if pts.Length = 1 then pts @ [ pts.Head ] else pts
                sb.AppendFormat("<polyline class=\"memory-series\" data-task=\"{0}\" data-try=\"{1}\" fill=\"none\" stroke=\"#1e88e5\" points=\"{2}\"><title>task {0} try {1}</title></polyline>", task, tryId, String.Join(" ", pts)) |> ignore
                for s in ss do
                    sb.AppendFormat("<circle class=\"memory-point\" cx=\"{0}\" cy=\"{1}\" r=\"2\" fill=\"#1e88e5\"/>", f (left + (t s - t0).TotalSeconds / tmax * w), f (h - s.MemoryResident / vmax * h)) |> ignore
            sb.Append("</svg>").ToString()
