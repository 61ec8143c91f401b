/// File staging through the kernel, on the thread-pool executor, against real servers on loopback.
module Parsl.Tests.StagingTests

open System
open System.IO
open System.IO.Compression
open System.Text
open Expecto
open Parsl
open Parsl.Tests.TestUtil
open Parsl.Tests.Servers
open Parsl.Data
open Parsl.Runtime

let private readText (f: Parsl.Data.File) = File.ReadAllText f.Filepath

let private withStaging (providers: StagingProvider list) (c: Config) = { c with Staging = providers }

let private inTask = [ NoOpFileStaging; HttpStaging InTask; FtpStaging InTask; ZipStaging InTask ]

let private members (zip: string) =
    use z = ZipFile.OpenRead zip
    [ for e in z.Entries -> e.FullName ] |> List.sort

let private memberText (zip: string) (name: string) =
    use z = ZipFile.OpenRead zip
    use r = new StreamReader(z.GetEntry(name).Open())
    r.ReadToEnd()

let private stagingError (e: exn) =
    match e with
    | :? StagingError as s -> s
    | :? DependencyError as d when (d.InnerException :? StagingError) -> d.InnerException :?> StagingError
    | e -> failtestf "expected a StagingError, got %O" e

let private httpTests (mode: string) (providers: Config -> Config) =
    [ test (sprintf "HTTP stage-in (%s): the app reads the downloaded file" mode) {
          use server = new HttpServer(Map [ "/data/in.txt", Encoding.UTF8.GetBytes "hello over http" ])
          use dfk = load providers
          let read = App.func dfk readText
          let r = read (Arg.file (File.Of(server.Url + "/data/in.txt")))
          Expect.equal (await r.Task) "hello over http" "content"
          Expect.equal (server.Requests "/data/in.txt") 1 "downloaded once"
      }
      test (sprintf "HTTP stage-in (%s): a 404 fails the task and its dependents, naming the URL" mode) {
          use server = new HttpServer(Map.empty)
          use dfk = load providers
          let read = App.func dfk readText
          let url = server.Url + "/missing.txt"
          let r = read (Arg.file (File.Of url))
          let e = stagingError (errorOf r)
          Expect.equal e.Url url "names the URL"
          Expect.stringContains e.Message "404" "says why"
          let after = App.func dfk (fun (s: string) -> s.Length) (Arg.future r)
          Expect.isTrue (errorOf after :? DependencyError) "dependents fail"
          Expect.equal after.State DepFail "dep_fail"
      }
      test (sprintf "HTTP stage-in (%s): an unreachable server fails the task, naming the URL" mode) {
          use dfk = load providers
          let url = sprintf "http://127.0.0.1:%d/x.txt" (freePort ())
          let e = stagingError (errorOf ((App.func dfk readText) (Arg.file (File.Of url))))
          Expect.equal e.Url url "names the URL"
          Expect.stringContains e.Message "could not be reached" "says why"
      } ]

let private ftpTests (mode: string) (providers: Config -> Config) =
    [ test (sprintf "FTP stage-in from vsftpd (%s): the app reads the file; a missing one fails naming the URL" mode) {
          let root = tempRunDir ()
          Directory.CreateDirectory(Path.Combine(root, "pub")) |> ignore
          let payload = String.replicate 5000 "ftp data line\n"
          File.WriteAllText(Path.Combine(root, "pub", "data.txt"), payload)
          use server = new FtpServer(root)
          use dfk = load providers
          let read = App.func dfk readText
          Expect.equal (await (read (Arg.file (File.Of(server.Url + "/pub/data.txt")))).Task) payload "content"
          let url = server.Url + "/pub/none.txt"
          let e = stagingError (errorOf (read (Arg.file (File.Of url))))
          Expect.equal e.Url url "names the URL"
          Expect.stringContains e.Message "550" "the server's refusal"
      } ]

let private zipTests (mode: string) (providers: Config -> Config) =
    [ test (sprintf "zip stage-out then stage-in across tasks (%s)" mode) {
          let dir = tempRunDir ()
          let archive = Path.Combine(dir, "results.zip")
          use dfk = load providers
          let produce =
              App.func2 dfk (fun (text: string) (out: Parsl.Data.File) -> File.WriteAllText(out.Filepath, text); text.Length)
          let consume = App.func dfk (fun (f: Parsl.Data.File) -> (readText f).ToUpperInvariant())
          let p = produce (Arg.value "zipped text") (Arg.output (File.Of(sprintf "zip:%s/dir/m.txt" archive)))
          Expect.equal p.Outputs.Count 1 "one output"
          let c = consume (Arg.data p.Outputs[0])
          Expect.equal (await c.Task) "ZIPPED TEXT" "the consumer read the member out of the archive"
          Expect.equal (await p.Outputs[0].Task).Url (sprintf "zip:%s/dir/m.txt" archive) "the data future gives the file"
          Expect.equal (members archive) [ "dir/m.txt" ] "the member is in the archive"
          Expect.equal (memberText archive "dir/m.txt") "zipped text" "its content"
      }
      test (sprintf "concurrent zip stage-outs into one archive keep every member (%s)" mode) {
          let dir = tempRunDir ()
          let archive = Path.Combine(dir, "many.zip")
          use dfk = load (providers >> fun c -> { c with Executors = [ Parsl.Executors.ThreadPoolExecutor("threads", 8) ] })
          let produce = App.func2 dfk (fun (i: int) (out: Parsl.Data.File) -> File.WriteAllText(out.Filepath, sprintf "member %d" i); i)
          let rs = [ for i in 1..24 -> produce (Arg.value i) (Arg.output (File.Of(sprintf "zip:%s/m%02d.txt" archive i))) ]
          for r in rs do
              await r.Outputs[0].Task |> ignore
          Expect.equal (members archive) [ for i in 1..24 -> sprintf "m%02d.txt" i ] "all members"
          Expect.equal (memberText archive "m17.txt") "member 17" "content"
      }
      test (sprintf "a failed producer loses nothing already staged; a missing member fails naming the URL (%s)" mode) {
          let dir = tempRunDir ()
          let archive = Path.Combine(dir, "keep.zip")
          use dfk = load providers
          let produce = App.func2 dfk (fun (ok: bool) (out: Parsl.Data.File) -> (if not ok then failwith "producer failed"); File.WriteAllText(out.Filepath, "kept"); 1)
          let good = produce (Arg.value true) (Arg.output (File.Of(sprintf "zip:%s/a.txt" archive)))
          await good.Outputs[0].Task |> ignore
          let bad = produce (Arg.value false) (Arg.output (File.Of(sprintf "zip:%s/b.txt" archive)))
          let e = errorOf bad
          Expect.stringContains e.Message "producer failed" "the producer's error"
          let t = bad.Outputs[0].Task
          let _ = (try t.Wait(TimeSpan.FromSeconds 60.0) with :? AggregateException -> true)
          Expect.isTrue t.IsFaulted "its data future fails"
          Expect.equal (members archive) [ "a.txt" ] "the earlier member is still there"
          Expect.equal (memberText archive "a.txt") "kept" "intact"
          let read = App.func dfk readText
          let url = sprintf "zip:%s/nope.txt" archive
          let e = stagingError (errorOf (read (Arg.file (File.Of url))))
          Expect.equal e.Url url "names the URL"
      } ]

let tests =
    testList "Staging" [
        yield! httpTests "separate task" id
        yield! httpTests "in task" (withStaging inTask)
        yield! ftpTests "separate task" id
        yield! ftpTests "in task" (withStaging inTask)
        yield! zipTests "separate task" id
        yield! zipTests "in task" (withStaging inTask)
        test "separate staging tasks are kernel tasks; in-task staging adds none" {
            use server = new HttpServer(Map [ "/x.txt", Encoding.UTF8.GetBytes "x" ])
            use separate = load id
            let r = (App.func separate readText) (Arg.file (File.Of(server.Url + "/x.txt")))
            await r.Task |> ignore
            Expect.equal r.TaskId.Value 1 "task 0 was the stage-in task"
            Expect.equal separate.FinalCounts[ExecDone] 2 "two tasks ran"
            use inside = load (withStaging inTask)
            let r = (App.func inside readText) (Arg.file (File.Of(server.Url + "/x.txt")))
            await r.Task |> ignore
            Expect.equal r.TaskId.Value 0 "no extra task"
        }
        test "a local output's data future completes with its producer, and can be a dependency" {
            let dir = tempRunDir ()
            use dfk = load id
            let out = File.Of(Path.Combine(dir, "local.txt"))
            let produce = App.func2 dfk (fun (s: string) (o: Parsl.Data.File) -> File.WriteAllText(o.Filepath, s); 0)
            let p = produce (Arg.value "local") (Arg.output out)
            let c = (App.func dfk readText) (Arg.data p.Outputs[0])
            Expect.equal (await c.Task) "local" "read after the producer"
            Expect.equal p.Outputs[0].TaskId p.TaskId "the producer's task"
            let many = (App.func dfk (fun (fs: Parsl.Data.File[]) -> fs.Length)) (Arg.files [ p.Outputs[0]; p.Outputs[0] ])
            Expect.equal (await many.Task) 2 "several data futures"
        }
        test "a shell app's File stdout is staged out like an output, and its data future completes" {
            let dir = tempRunDir ()
            let archive = Path.Combine(dir, "logs.zip")
            use dfk = load id
            let out = File.Of(sprintf "zip:%s/task/out.txt" archive)
            let local = Staging.stdPath dfk out
            // The command writes the file itself as well, so this test does not depend on the shell runner's redirection.
            let echo = App.shellWith dfk { AppOptions.defaults with Stdout = Some(Staged out) } (fun (x: int) -> sprintf "printf 'line %d' > '%s'" x local)
            let r = echo (Arg.value 1)
            Expect.equal (await r.Task) 0 "exit 0"
            Expect.isNotNull r.Stdout "stdout has a data future"
            let f = await r.Stdout.Task
            Expect.equal f.Url out.Url "the stdout file"
            Expect.equal (memberText archive "task/out.txt") "line 1" "staged into the archive"
        }
        test "a scheme no provider handles is refused at the call, naming the URL" {
            use dfk = load (withStaging [ NoOpFileStaging ])
            let read = App.func dfk readText
            Expect.throwsT<StagingError> (fun () -> read (Arg.file (File.Of "http://127.0.0.1:9/x")) |> ignore) "refused"
        }
    ]
