module Parsl.Dashboard.Tests.DashboardTests

open System
open System.Diagnostics
open System.IO
open System.Net
open System.Net.Http
open System.Text.Json
open System.Threading
open Expecto
open PuppeteerSharp
open Parsl
open Parsl.Dashboard
open Parsl.Monitoring

let private tempDir () =
    let d = Path.Combine(Path.GetTempPath(), "parsl-dashboard-tests", Guid.NewGuid().ToString("N"))
    Directory.CreateDirectory d |> ignore
    d

let private wait (t: Threading.Tasks.Task<'T>) =
    if not (t.Wait(TimeSpan.FromSeconds 90.0)) then failwith "timed out after 90 s"
    t.Result

let private waitTask (t: Threading.Tasks.Task) =
    if not (t.Wait(TimeSpan.FromSeconds 90.0)) then failwith "timed out after 90 s"

/// A finished run with every kind of outcome: four squares, a failure with a known cause, a dependency failure, a
/// shell app with stdout. Shared by the tests that read the database after the run.
type Run = { Db: string; RunId: string; FailedTask: int; ShellTask: int; Out: string }

let private finishedRun =
    lazy
        (let baseDir = tempDir ()
         let out = Path.Combine(baseDir, "echo.out")
         let dfk = DataFlowKernel.Load { Config.defaults with RunDir = baseDir; Monitoring = Some MonitoringConfig.defaults }
         let h = Option.get dfk.Monitoring
         let square = App.func dfk (fun (x: int) -> x * x)
         let picky = App.func dfk (fun (x: int) -> if x < 0 then raise (ArgumentOutOfRangeException("x", "the input was negative on purpose")) else x)
         let after = App.func dfk (fun (x: int) -> x + 1)
         let echo = App.shellWith dfk { AppOptions.defaults with Stdout = Some(Path out) } (fun (s: string) -> "echo " + s)
         let squares = [ for i in 1..4 -> square (Arg.value i) ]
         let bad = picky (Arg.value -1)
         let dep = after (Arg.future bad)
         let shell = echo (Arg.value "hello-from-stdout")
         for f in squares do wait f.Task |> ignore
         wait shell.Task |> ignore
         (try dep.Task.Wait(TimeSpan.FromSeconds 90.0) |> ignore with _ -> ())
         (dfk :> IDisposable).Dispose()
         { Db = Option.get h.DatabasePath; RunId = h.RunId; FailedTask = bad.TaskId.Value; ShellTask = shell.TaskId.Value; Out = out })

let private text (page: IPage) (selector: string) =
    wait (page.EvaluateExpressionAsync<string>(sprintf "document.querySelector(%s).textContent" (JsonSerializer.Serialize selector)))

let private count (page: IPage) (selector: string) =
    wait (page.EvaluateExpressionAsync<int>(sprintf "document.querySelectorAll(%s).length" (JsonSerializer.Serialize selector)))

let private goto (page: IPage) (url: string) =
    let r = wait (page.GoToAsync(url, WaitUntilNavigation.Load))
    Expect.equal r.Status HttpStatusCode.OK (sprintf "%s loads" url)

let private shot (page: IPage) (name: string) =
    let path = Path.Combine(Browser.artifacts (), name + ".png")
    waitTask (page.ScreenshotAsync(path, ScreenshotOptions(FullPage = true)))
    Expect.isTrue (FileInfo(path).Length > 1000L) "a screenshot"

let browser =
    testList "in Chromium" [
        test "Dashboard = true prints an address; the page updates while the run goes on" {
            let baseDir = tempDir ()
            let dfk =
                DataFlowKernel.Load
                    { Config.defaults with
                        RunDir = baseDir
                        Monitoring = Some { MonitoringConfig.defaults with Dashboard = true } }
            let h = Option.get dfk.Monitoring
            use gate = new ManualResetEventSlim(false)
            use started = new ManualResetEventSlim(false)
            let hold = App.func dfk (fun (x: int) -> started.Set(); gate.Wait(TimeSpan.FromSeconds 90.0) |> ignore; x)
            let square = App.func dfk (fun (x: int) -> x * x)
            let held = hold (Arg.value 7)
            for i in 1..3 do wait (square (Arg.value i)).Task |> ignore
            Expect.isTrue (started.Wait(TimeSpan.FromSeconds 90.0)) "the held task runs"
            waitTask (h.FlushAsync())
            let address = h.DashboardAddress
            Expect.stringStarts address "http://127.0.0.1:" "loopback by default"
            Expect.stringContains address ("/workflow/" + h.RunId) "opens the run"
            use b = Browser.launch ()
            use page = wait (b.NewPageAsync())
            goto page address
            Expect.equal (text page "#workflow-status") "running" "the run is running"
            Expect.equal (text page "#count-running") "1" "one task running"
            Expect.equal (text page "#count-exec_done") "3" "three done"
            shot page "live-running"
            gate.Set()
            wait held.Task |> ignore
            // The page refreshes itself: no reload from the test.
            waitTask (page.WaitForFunctionAsync("() => document.querySelector('#count-exec_done').textContent === '4'", WaitForFunctionOptions(Timeout = 60000)))
            Expect.equal (text page "#count-running") "0" "none running"
            shot page "live-done"
            (dfk :> IDisposable).Dispose()
        }

        test "every page of a finished run, served from its database as `parsl visualize` does" {
            let run = finishedRun.Force()
            let server = wait (DashboardServer.StartAsync { Database = run.Db; Address = "127.0.0.1"; Port = 0; Token = None; RunId = None })
            try
                let root = server.Address.TrimEnd('/')
                let wf = root + "/workflow/" + run.RunId
                use b = Browser.launch ()
                use page = wait (b.NewPageAsync())

                goto page (root + "/")
                Expect.equal (count page ".workflow-row") 1 "one workflow"
                Expect.equal (text page ".workflow-row .status-completed") "completed" "completed"
                shot page "workflows"

                goto page wf
                Expect.equal (text page "#workflow-status") "completed" "status"
                Expect.equal (text page "#count-exec_done") "5" "four squares and the shell app"
                Expect.equal (text page "#count-failed") "1" "one failed"
                Expect.equal (text page "#count-dep_fail") "1" "one dependency failure"
                Expect.equal (text page "#count-all") "7" "seven tasks"
                Expect.equal (count page "rect.gantt-bar") 6 "a Gantt bar per try (the dep_fail task never ran)"
                Expect.equal (count page "rect.gantt-bar.state-failed") 1 "the failed try in red"
                Expect.isGreaterThan (count page "polyline.series") 3 "states over time"
                Expect.equal (count page "tr.app-row") 4 "four apps"
                shot page "overview"

                goto page (wf + "/failures")
                Expect.equal (count page "tr.failure-row") 2 "two failed tasks"
                let cause = text page (sprintf "tr.failure-row[data-task='%d'] .cause" run.FailedTask)
                Expect.stringContains cause "ArgumentOutOfRangeException" "the cause's type"
                Expect.stringContains cause "the input was negative on purpose" "the cause's message"
                Expect.stringContains (text page (sprintf "tr.failure-row[data-task='%d'] .cause" (run.FailedTask + 1))) "dependency failed" "the dependency failure"
                shot page "failures"

                goto page (wf + "/tasks")
                Expect.equal (count page "tr.task-row") 7 "every task"
                Expect.equal (count page "tr.task-row[data-state='exec_done']") 5 "done rows"
                shot page "tasks"

                goto page (sprintf "%s/task/%d" wf run.FailedTask)
                Expect.equal (text page "#task-state") "failed" "the task's state"
                Expect.stringContains (text page "#task-tries") "the input was negative on purpose" "the try's cause"
                Expect.isGreaterThan (count page "#task-statuses tr") 3 "its state history"
                shot page "task-failed"

                goto page (sprintf "%s/task/%d" wf run.ShellTask)
                let link = wait (page.EvaluateExpressionAsync<string>("document.querySelector('a.output').href"))
                goto page link
                Expect.stringContains (text page "body") "hello-from-stdout" "the task's stdout, linked"

                goto page (wf + "/dag")
                Expect.equal (count page "g.dag-node") 7 "a node per task"
                Expect.equal (count page "line.dag-edge") 1 "the one dependency"
                Expect.equal (count page "g.dag-node.state-dep_fail") 1 "coloured by state"
                shot page "dag"

                goto page (wf + "/resources")
                Expect.stringContains (text page "main") "No resource samples" "the thread pool records none"
                shot page "resources"

                goto page (wf + "/report.html")
                Expect.equal (text page "#count-exec_done") "5" "the report's counts"
                Expect.equal (count page "tr.failure-row") 2 "the report's failures"
                shot page "report"
            finally
                waitTask (server.StopAsync())
        }
    ]

let http =
    testList "over HTTP" [
        test "the JSON API gives the same counts as the pages" {
            let run = finishedRun.Force()
            let server = wait (DashboardServer.StartAsync { Database = run.Db; Address = "127.0.0.1"; Port = 0; Token = None; RunId = None })
            try
                use client = new HttpClient()
                let get (path: string) = JsonDocument.Parse(wait (client.GetStringAsync(server.Address.TrimEnd('/') + path))).RootElement
                let w = get ("/api/workflow/" + run.RunId)
                Expect.equal (w.GetProperty("counts").GetProperty("exec_done").GetInt32()) 5 "exec_done"
                Expect.equal (w.GetProperty("counts").GetProperty("failed").GetInt32()) 1 "failed"
                Expect.equal (w.GetProperty("workflow").GetProperty("status").GetString()) "completed" "status"
                let tries = get ("/api/workflow/" + run.RunId + "/tries")
                Expect.equal (tries.GetArrayLength()) 6 "tries"
                let failures = get ("/api/workflow/" + run.RunId + "/failures")
                Expect.equal (failures.GetArrayLength()) 2 "failures"
                Expect.equal (get("/api/workflows").GetArrayLength()) 1 "workflows"
                let r = wait (client.GetAsync(server.Address.TrimEnd('/') + "/workflow/nope"))
                Expect.equal r.StatusCode HttpStatusCode.NotFound "an unknown run"
            finally
                waitTask (server.StopAsync())
        }

        test "with a token, a request without it is refused; with it, served" {
            let run = finishedRun.Force()
            let token = "a-secret-token-0123456789"
            let server = wait (DashboardServer.StartAsync { Database = run.Db; Address = "127.0.0.1"; Port = 0; Token = Some token; RunId = Some run.RunId })
            try
                Expect.stringContains server.Address ("?token=" + token) "the printed address carries it"
                let bare = Uri(server.Address).GetLeftPart(UriPartial.Path)
                use client = new HttpClient()
                Expect.equal (wait (client.GetAsync bare)).StatusCode HttpStatusCode.Unauthorized "no token"
                Expect.equal (wait (client.GetAsync(bare + "?token=wrong-token-0123456789"))).StatusCode HttpStatusCode.Unauthorized "a wrong token"
                use req = new HttpRequestMessage(HttpMethod.Get, bare)
                req.Headers.Add("X-Parsl-Token", token)
                Expect.equal (wait (client.SendAsync req)).StatusCode HttpStatusCode.OK "the header"
                Expect.equal (wait (client.GetAsync server.Address)).StatusCode HttpStatusCode.OK "the query"
            finally
                waitTask (server.StopAsync())
        }

        test "off loopback, a token is required" {
            let run = finishedRun.Force()
            Expect.throwsT<ConfigurationError> (fun () -> (DashboardServer.StartAsync { Database = run.Db; Address = "0.0.0.0"; Port = 0; Token = None; RunId = None }).GetAwaiter().GetResult() |> ignore) "refused"
        }

        test "parsl visualize serves a database; parsl report writes one HTML file" {
            let run = finishedRun.Force()
            let cli = Path.Combine(AppContext.BaseDirectory, "parsl.dll")
            let psi = ProcessStartInfo("dotnet", [ cli; "visualize"; "--db"; run.Db; "--port"; "0" ], RedirectStandardOutput = true, UseShellExecute = false)
            use p = Process.Start psi
            try
                let line = p.StandardOutput.ReadLine()
                Expect.stringStarts line "Parsl dashboard: http://127.0.0.1:" "it prints its address"
                let address = line.Substring("Parsl dashboard: ".Length).TrimEnd('/')
                use client = new HttpClient()
                Expect.stringContains (wait (client.GetStringAsync(address + "/api/workflows"))) run.RunId "it serves the run"
            finally
                p.Kill true
                p.WaitForExit()
            let out = Path.Combine(tempDir (), "report.html")
            use r = Process.Start(ProcessStartInfo("dotnet", [ cli; "report"; "--db"; run.Db; "--out"; out ], RedirectStandardOutput = true, UseShellExecute = false))
            r.StandardOutput.ReadToEnd() |> ignore
            r.WaitForExit()
            Expect.equal r.ExitCode 0 "exit code"
            let html = File.ReadAllText out
            Expect.stringContains html "the input was negative on purpose" "the failure's cause"
            Expect.isFalse (html.Contains "<script") "one self-contained file, no script"
        }
    ]

let tests = testList "Dashboard" [ browser; http ]
