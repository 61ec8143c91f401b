module Parsl.PackageTests.Main

open Expecto

[<EntryPoint>]
let main argv =
    // Packed on first use, once for every test; removed at the end.
    let sandbox = lazy (Sandbox.create ())
    let all = testList "Packages" [ NewUserTests.tests sandbox; ReadmeTests.tests sandbox ]
    try runTestsWithCLIArgs [] argv all
    finally if sandbox.IsValueCreated then Sandbox.delete sandbox.Value
