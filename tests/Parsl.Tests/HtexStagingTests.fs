/// File staging on the high-throughput executor: the same transfers as on the thread pool, with the apps (and, in
/// in-task mode, the staging itself) running in worker processes.
module Parsl.Tests.HtexStagingTests

open System.IO
open System.IO.Compression
open System.Text
open Expecto
open Parsl
open Parsl.Data
open Parsl.Executors
open Parsl.Executors.HighThroughput
open Parsl.Node.HighThroughput
open Parsl.Tests.TestUtil
open Parsl.Tests.Servers

let private inTask = [ NoOpFileStaging; HttpStaging InTask; FtpStaging InTask; ZipStaging InTask ]

/// A kernel whose only executor is an HTEx with one local block, with the given staging providers.
let private loadHtex (staging: StagingProvider list option) =
    let htex = HighThroughputExecutor(HtexTests.fastOptions id)
    load (fun c ->
        { c with
            Executors = [ htex ]
            Staging = defaultArg staging c.Staging })

let private modeTests (mode: string) (staging: StagingProvider list option) =
    [ test (sprintf "HTTP stage-in on HTEx (%s): a worker process reads the downloaded file" mode) {
          use server = new HttpServer(Map [ "/in.txt", Encoding.UTF8.GetBytes "hello from http" ])
          use dfk = loadHtex staging
          let read = App.func dfk (fun (f: Parsl.Data.File) -> System.IO.File.ReadAllText f.Filepath, System.Environment.ProcessId)
          let text, pid = await (read (Arg.file (File.Of(server.Url + "/in.txt")))).Task
          Expect.equal text "hello from http" "content"
          Expect.notEqual pid System.Environment.ProcessId "read in a worker process"
      }
      test (sprintf "zip stage-out then stage-in across tasks on HTEx (%s)" mode) {
          let archive = Path.Combine(tempRunDir (), "out.zip")
          use dfk = loadHtex staging
          let produce =
              App.func2 dfk (fun (text: string) (out: Parsl.Data.File) -> System.IO.File.WriteAllText(out.Filepath, text); text.Length)
          let consume = App.func dfk (fun (f: Parsl.Data.File) -> (System.IO.File.ReadAllText f.Filepath).ToUpperInvariant())
          let p = produce (Arg.value "zipped on a worker") (Arg.output (File.Of(sprintf "zip:%s/r/m.txt" archive)))
          let c = consume (Arg.data p.Outputs[0])
          Expect.equal (await c.Task) "ZIPPED ON A WORKER" "the consumer read the member"
          use z = ZipFile.OpenRead archive
          Expect.equal [ for e in z.Entries -> e.FullName ] [ "r/m.txt" ] "the member is in the archive"
      }
      test (sprintf "a 404 on HTEx (%s) fails the task naming the URL" mode) {
          use server = new HttpServer(Map.empty)
          use dfk = loadHtex staging
          let read = App.func dfk (fun (f: Parsl.Data.File) -> System.IO.File.ReadAllText f.Filepath)
          let url = server.Url + "/none.txt"
          let e = errorOf (read (Arg.file (File.Of url)))
          // Raised on a worker, the StagingError comes back as a RemoteException carrying its type and message.
          let cause =
              match e with
              | :? DependencyError as d -> d.InnerException
              | e -> e
          match cause with
          | :? RemoteException as r ->
              Expect.equal r.TypeName typeof<StagingError>.FullName "the remote error's type"
              Expect.stringContains r.Message url "names the URL"
              Expect.stringContains r.Message "404" "says why"
          | :? StagingError as s -> Expect.equal s.Url url "names the URL"
          | e -> failtestf "expected a StagingError from the worker, got %O" e
      } ]

let tests =
    testList "HTEx staging" [
        testList "separate tasks" (modeTests "separate tasks" None)
        testList "in the task" (modeTests "in the task" (Some inTask))
    ]
