/// `dotnet run --project bench/Parsl.Bench -c Release [-- threads|htex]`: prints one figure per line.
module Parsl.Bench.Program

[<EntryPoint>]
let main argv =
    let want name = (argv.Length = 0 || Array.contains name argv) && not (Array.contains "noop" argv)
    if want "threads" then ThreadPool.run (printfn "%s")
    if Array.contains "noop" argv then ThreadPool.noop (printfn "%s")
    0
