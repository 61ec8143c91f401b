/// The `parsl` command (a dotnet tool): `parsl visualize` serves the monitoring dashboard over a database file (as
/// Parsl's `parsl-visualize`), `parsl report` writes a one-file HTML report of a run.
module Parsl.Cli.Program

open System
open System.CommandLine
open System.IO
open System.Threading
open System.Threading.Tasks
open Parsl
open Parsl.Dashboard
open Parsl.Monitoring

let private option<'T> (name: string) (description: string) (fallback: 'T option) =
    let o = Option<'T>(name)
    o.Description <- description
    match fallback with
    | Some v -> o.DefaultValueFactory <- fun _ -> v
    | None -> o.Required <- true
    o

let private visualize () =
    let db = option<string> "--db" "The monitoring database (default: runinfo/monitoring.db)" (Some(Path.Combine("runinfo", "monitoring.db")))
    let port = option<int> "--port" "The port (default 8080, as parsl-visualize; 0 for a free one)" (Some 8080)
    let address = option<string> "--address" "The address to listen on (default 127.0.0.1; another needs --token)" (Some "127.0.0.1")
    let token = option<string> "--token" "A secret every request must carry (required off loopback)" (Some null)
    let cmd = Command("visualize", "Serve the monitoring dashboard over a database until Ctrl+C")
    for o in [ db :> Option; port; address; token ] do
        cmd.Add o
    cmd.SetAction(Func<ParseResult, CancellationToken, Task<int>>(fun r ct ->
        task {
            try
                let! server =
                    DashboardServer.StartAsync
                        { Database = Path.GetFullPath(r.GetValue db); Address = r.GetValue address; Port = r.GetValue port
                          Token = Option.ofObj (r.GetValue token); RunId = None }
                Console.WriteLine("Parsl dashboard: {0}", server.Address)
                Console.WriteLine("Press Ctrl+C to stop.")
                try
                    do! Task.Delay(Timeout.Infinite, ct)
                with :? OperationCanceledException -> ()
                do! server.StopAsync()
                return 0
            with :? ConfigurationError as e ->
                eprintfn "parsl visualize: %s" e.Message
                return 2
        }))
    cmd

let private report () =
    let db = option<string> "--db" "The monitoring database (default: runinfo/monitoring.db)" (Some(Path.Combine("runinfo", "monitoring.db")))
    let run = option<string> "--run" "The run id (default: the newest run)" (Some null)
    let out = option<string> "--out" "The HTML file to write (default: parsl-report-RUN.html)" (Some null)
    let cmd = Command("report", "Write a one-file HTML report of a run")
    for o in [ db :> Option; run; out ] do
        cmd.Add o
    cmd.SetAction(Func<ParseResult, int>(fun r ->
        let path = r.GetValue db
        if not (File.Exists path) then
            eprintfn "parsl report: the database %s does not exist" path
            2
        else
            use conn = Database.openRead path
            let wanted = r.GetValue run
            match Queries.workflows conn |> List.tryFind (fun w -> isNull wanted || w.RunId = wanted) with
            | None ->
                eprintfn "parsl report: no run %s in %s" (if isNull wanted then "at all" else wanted) path
                2
            | Some w ->
                let file = match r.GetValue out with null -> sprintf "parsl-report-%s.html" w.RunId | f -> f
                File.WriteAllText(file, Pages.report conn w)
                Console.WriteLine("Wrote {0}", Path.GetFullPath file)
                0))
    cmd

[<EntryPoint>]
let main argv =
    let root = RootCommand("Parsl.NET: the monitoring dashboard and reports")
    root.Add(visualize ())
    root.Add(report ())
    root.Parse(argv).Invoke()
