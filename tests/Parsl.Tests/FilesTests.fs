module Parsl.Tests.FilesTests

open System
open Expecto
open Parsl
open Parsl.Data

let private f (url: string) = File.Of url

let tests =
    testList "Files" [
        test "a bare path is a file URL with the path and file name" {
            let x = f "data/input.txt"
            Expect.equal x.Scheme "file" "default scheme"
            Expect.equal x.Netloc "" "no host"
            Expect.equal x.Path "data/input.txt" "path"
            Expect.equal x.FileName "input.txt" "name"
            Expect.equal x.Filepath "data/input.txt" "a local file opens at its path"
        }
        test "file, http, https, ftp and zip URLs are parsed as urlparse does" {
            let x = f "file:///scratch/run/a.dat"
            Expect.equal (x.Scheme, x.Netloc, x.Path, x.FileName) ("file", "", "/scratch/run/a.dat", "a.dat") "file URL"
            let x = f "http://example.org:8080/dir/x.csv?version=2#top"
            Expect.equal (x.Scheme, x.Netloc, x.Path, x.FileName) ("http", "example.org:8080", "/dir/x.csv", "x.csv") "http URL"
            let x = f "HTTPS://host/y"
            Expect.equal x.Scheme "https" "schemes are lower case"
            let x = f "ftp://ftp.host/pub/z.gz"
            Expect.equal (x.Scheme, x.Netloc, x.Path, x.FileName) ("ftp", "ftp.host", "/pub/z.gz", "z.gz") "ftp URL"
            let x = f "zip:/tmp/a.zip/inner/dir/m.txt"
            Expect.equal (x.Scheme, x.Netloc, x.Path, x.FileName) ("zip", "", "/tmp/a.zip/inner/dir/m.txt", "m.txt") "zip URL"
            Expect.equal (File.zipSplit x) (Ok("/tmp/a.zip", "inner/dir/m.txt")) "archive and member"
        }
        test "a remote file has no file path until staged; staging sets the local path" {
            let x = f "http://h/x.csv"
            Expect.throwsT<InvalidOperationException> (fun () -> x.Filepath |> ignore) "not staged"
            let s = x.WithLocalPath "/tmp/x.csv"
            Expect.equal s.Filepath "/tmp/x.csv" "staged"
            Expect.equal (s.CleanCopy()) x "clean copy drops the local path"
        }
        test "a zip URL with a host, or without a member, is refused with the URL in the message" {
            match File.zipSplit (f "zip://host/a.zip/b") with
            | Error(:? ZipAuthorityError as e) -> Expect.stringContains e.Message "zip://host/a.zip/b" "names the URL"
            | other -> failtestf "expected ZipAuthorityError, got %A" other
            match File.zipSplit (f "zip:/tmp/archive.tar/b") with
            | Error(:? StagingError as e) -> Expect.equal e.Url "zip:/tmp/archive.tar/b" "names the URL"
            | other -> failtestf "expected StagingError, got %A" other
        }
        test "an empty URL is refused" {
            Expect.throwsT<ArgumentException> (fun () -> f " " |> ignore) "empty"
        }
        testProperty "scheme, host and path survive a round trip through a URL" (fun (a: byte) (b: byte) (segs: byte list) ->
            let scheme = [| "http"; "https"; "ftp"; "file" |][int a % 4]
            let host = sprintf "h%d.example:%d" b (1000 + int b)
            let path = "/" + String.Join("/", segs |> List.map (sprintf "s%d"))
            let x = f (sprintf "%s://%s%s" scheme host path)
            x.Scheme = scheme && x.Netloc = host && x.Path = path
            && x.FileName = (match segs with [] -> "" | _ -> sprintf "s%d" (List.last segs)))
        test "staging providers: local files need none, http/ftp are stage-in only, zip goes both ways" {
            let can p (u: string) = StagingProvider.canStageIn (f u) p, StagingProvider.canStageOut (f u) p
            Expect.equal (can NoOpFileStaging "a.txt") (true, true) "no-op for local files"
            Expect.equal (can (HttpStaging SeparateTask) "https://h/x") (true, false) "http"
            Expect.equal (can (FtpStaging InTask) "ftp://h/x") (true, false) "ftp"
            Expect.equal (can (ZipStaging SeparateTask) "zip:/a.zip/x") (true, true) "zip"
            Expect.equal (can (HttpStaging SeparateTask) "ftp://h/x") (false, false) "scheme mismatch"
        }
    ]
