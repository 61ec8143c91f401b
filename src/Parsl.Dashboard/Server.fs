namespace Parsl.Dashboard

open System
open System.IO
open System.Net
open System.Security.Cryptography
open System.Text
open System.Text.Json
open System.Threading.Tasks
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Hosting
open Microsoft.AspNetCore.Hosting.Server
open Microsoft.AspNetCore.Hosting.Server.Features
open Microsoft.AspNetCore.Http
open Microsoft.Extensions.DependencyInjection
open Microsoft.Extensions.Logging
open Parsl
open Parsl.Monitoring

/// Where the dashboard listens and who may read it.
type DashboardSettings =
    { /// The monitoring database.
      Database: string
      /// Default 127.0.0.1; another address needs a token.
      Address: string
      /// 0: a free port.
      Port: int
      /// A secret every request must carry (`?token=`, the `X-Parsl-Token` header, or the cookie set by the first).
      Token: string option
      /// The run the printed address opens (None: the list of workflows).
      RunId: string option }

/// A running dashboard server.
[<Sealed>]
type DashboardServer private (app: WebApplication, address: string) =
    /// The address to open, with the run and the token when there are.
    member _.Address = address

    /// Serves the dashboard over a monitoring database: the pages (refreshing themselves while a run goes on), a
    /// JSON API with the same data under `/api/`, one-file reports and the tasks' output files.
    static member StartAsync(settings: DashboardSettings) : Task<DashboardServer> =
        task {
            if not (File.Exists settings.Database) then
                raise (ConfigurationError("Dashboard.Database", sprintf "the file %s does not exist; give a monitoring database (runinfo/monitoring.db)" settings.Database))
            if not (MonitoringConfig.isLoopback settings.Address) && settings.Token.IsNone then
                raise (ConfigurationError("Dashboard.Token", sprintf "is required to listen on %s, which is not a loopback address" settings.Address))
            let builder = WebApplication.CreateSlimBuilder(WebApplicationOptions(Args = [||], ContentRootPath = AppContext.BaseDirectory))
            builder.Logging.ClearProviders() |> ignore
            if not (isNull (Environment.GetEnvironmentVariable "PARSL_DASHBOARD_DEBUG")) then builder.Logging.AddConsole() |> ignore
            let ip =
                match settings.Address with
                | "localhost" -> IPAddress.Loopback
                | a -> IPAddress.Parse a
            builder.WebHost.ConfigureKestrel(fun o -> o.Listen(ip, settings.Port)) |> ignore
            let app = builder.Build()
            let db = settings.Database
            let json = JsonSerializerOptions(JsonSerializerDefaults.Web)

            match settings.Token with
            | Some token ->
                let expected = Encoding.UTF8.GetBytes token
                let ok (given: string) =
                    not (String.IsNullOrEmpty given) && CryptographicOperations.FixedTimeEquals(ReadOnlySpan(Encoding.UTF8.GetBytes given), ReadOnlySpan expected)
                app.Use(Func<HttpContext, RequestDelegate, Task>(fun ctx next ->
                    let q = string ctx.Request.Query["token"]
                    if ok q then
                        ctx.Response.Cookies.Append("parsl_token", q, CookieOptions(HttpOnly = true, SameSite = SameSiteMode.Strict))
                        next.Invoke ctx
                    elif ok (string ctx.Request.Headers["X-Parsl-Token"]) || ok ctx.Request.Cookies["parsl_token"] then next.Invoke ctx
                    else
                        ctx.Response.StatusCode <- 401
                        ctx.Response.WriteAsync "This dashboard needs its token: open the address it printed (with ?token=...).")) |> ignore
            | None -> ()

            let withDb (f: Microsoft.Data.Sqlite.SqliteConnection -> HttpContext -> Task) =
                RequestDelegate(fun ctx ->
                    task {
                        use conn = Database.openRead db
                        do! f conn ctx
                    })
            let html (ctx: HttpContext) (s: string) =
                ctx.Response.ContentType <- "text/html; charset=utf-8"
                ctx.Response.WriteAsync s
            let send (ctx: HttpContext) (value: obj) =
                ctx.Response.ContentType <- "application/json; charset=utf-8"
                ctx.Response.WriteAsync(JsonSerializer.Serialize(value, json))
            let notFound (ctx: HttpContext) (what: string) =
                ctx.Response.StatusCode <- 404
                ctx.Response.WriteAsync(what + " not found")
            let runOf (ctx: HttpContext) = string ctx.Request.RouteValues["run"]
            let page (path: string) (title: string) (body: Microsoft.Data.Sqlite.SqliteConnection -> WorkflowView -> HttpContext -> string option) =
                app.MapGet(path, withDb (fun conn ctx ->
                    match Queries.workflow conn (runOf ctx) with
                    | None -> notFound ctx "workflow"
                    | Some w ->
                        match body conn w ctx with
                        | None -> notFound ctx "task"
                        | Some b ->
                            if ctx.Request.Query.ContainsKey "fragment" then html ctx b
                            else
                                let here = path.Substring("/workflow/{run}".Length)
                                html ctx (Pages.layout (sprintf "%s: %s" title w.Name) (Some w.RunId) here (w.Status = "running") b)))
                |> ignore

            app.MapGet("/health", RequestDelegate(fun ctx -> ctx.Response.WriteAsync "ok")) |> ignore
            app.MapGet("/", withDb (fun conn ctx -> html ctx (Pages.layout "Parsl workflows" None "" false (Pages.workflows (Queries.workflows conn))))) |> ignore
            page "/workflow/{run}" "Overview" (fun conn w _ -> Some(Pages.overview conn w))
            page "/workflow/{run}/tasks" "Tasks" (fun conn w _ -> Some(Pages.tasks conn w false))
            page "/workflow/{run}/failures" "Failures" (fun conn w _ -> Some(Pages.failures conn w false))
            page "/workflow/{run}/dag" "Task graph" (fun conn w _ -> Some(Pages.dag conn w))
            page "/workflow/{run}/resources" "Resources" (fun conn w _ -> Some(Pages.resources conn w))
            page "/workflow/{run}/task/{id:int}" "Task" (fun conn w ctx -> Pages.task conn w (int (string ctx.Request.RouteValues["id"])))
            app.MapGet("/workflow/{run}/report.html", withDb (fun conn ctx ->
                match Queries.workflow conn (runOf ctx) with
                | None -> notFound ctx "workflow"
                | Some w ->
                    ctx.Response.Headers.ContentDisposition <- Microsoft.Extensions.Primitives.StringValues(sprintf "inline; filename=\"parsl-report-%s.html\"" w.RunId)
                    html ctx (Pages.report conn w))) |> ignore
            // Only the paths the database records for this task are served: the dashboard is no file server.
            for stream in [ "stdout"; "stderr" ] do
                app.MapGet("/workflow/{run}/task/{id:int}/" + stream, withDb (fun conn ctx ->
                    let id = int (string ctx.Request.RouteValues["id"])
                    match Queries.tasks conn (runOf ctx) |> List.tryFind (fun t -> t.TaskId = id) with
                    | None -> notFound ctx "task"
                    | Some t ->
                        let path = if stream = "stdout" then t.Stdout else t.Stderr
                        if isNull path || not (File.Exists path) then notFound ctx "output file"
                        else
                            ctx.Response.ContentType <- "text/plain; charset=utf-8"
                            ctx.Response.SendFileAsync path)) |> ignore

            // The JSON API: the same data as the pages.
            let api (path: string) (f: Microsoft.Data.Sqlite.SqliteConnection -> WorkflowView -> HttpContext -> obj) =
                app.MapGet("/api/workflow/{run}" + path, withDb (fun conn ctx ->
                    match Queries.workflow conn (runOf ctx) with
                    | None -> notFound ctx "workflow"
                    | Some w -> send ctx (f conn w ctx))) |> ignore
            app.MapGet("/api/workflows", withDb (fun conn ctx -> send ctx (Queries.workflows conn))) |> ignore
            api "" (fun conn w _ ->
                let tasks = Queries.tasks conn w.RunId
                box {| workflow = w; counts = Queries.stateCounts tasks; apps = Queries.apps tasks |})
            api "/tasks" (fun conn w _ -> box (Queries.tasks conn w.RunId))
            api "/tries" (fun conn w _ -> box (Queries.tries conn w.RunId None))
            api "/statuses" (fun conn w _ -> box (Queries.statuses conn w.RunId))
            api "/states-over-time" (fun conn w _ ->
                box (Queries.statesOverTime 300 (Queries.statuses conn w.RunId) |> List.map (fun (t, m) -> {| seconds = t; counts = m |})))
            api "/resources" (fun conn w _ -> box (Queries.resources conn w.RunId None))
            api "/nodes" (fun conn w _ -> box (Queries.nodes conn w.RunId))
            api "/blocks" (fun conn w _ -> box (Queries.blocks conn w.RunId))
            api "/failures" (fun conn w _ ->
                let failed = Queries.tasks conn w.RunId |> List.filter (fun t -> t.State = "failed" || t.State = "dep_fail")
                let tries = Queries.tries conn w.RunId None
                box [ for t in failed -> {| task = t; tries = tries |> List.filter (fun y -> y.TaskId = t.TaskId) |} ])

            do! app.StartAsync()
            let bound =
                app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>().Addresses |> Seq.head
            let port = Uri(bound).Port
            let host = if ip.AddressFamily = Sockets.AddressFamily.InterNetworkV6 then sprintf "[%O]" ip else string ip
            let path = match settings.RunId with Some r -> "workflow/" + Uri.EscapeDataString r | None -> ""
            let query = match settings.Token with Some t -> "?token=" + Uri.EscapeDataString t | None -> ""
            return DashboardServer(app, sprintf "http://%s:%d/%s%s" host port path query)
        }

    /// Stops the server.
    member _.StopAsync() : Task =
        task {
            do! app.StopAsync()
            do! app.DisposeAsync()
        }

    interface IDashboard with
        member this.Address = this.Address
        member this.DisposeAsync() = ValueTask(this.StopAsync())

/// What `MonitoringConfig.Dashboard = true` calls (found by name, so that the core need not reference this package).
[<AbstractClass; Sealed>]
type DashboardFactory =
    /// Starts a dashboard over a run's database and returns it.
    static member Start(database: string, address: string, port: int, token: string, runId: string) : IDashboard =
        // Called once from the kernel's (synchronous) start, like the executors' own starts.
        DashboardServer.StartAsync(
            { Database = database; Address = address; Port = port; Token = Option.ofObj token; RunId = Option.ofObj runId })
            .GetAwaiter()
            .GetResult()
        :> IDashboard
