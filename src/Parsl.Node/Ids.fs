namespace Parsl

/// A task's id: DataFlowKernel-wide, from 0, increasing (Parsl's `task_id`).
[<Struct; CustomEquality; CustomComparison>]
type TaskId =
    /// The task number.
    val Value: int
    /// Wraps a task number.
    new(value) = { Value = value }
    override this.ToString() = string this.Value
    override this.GetHashCode() = this.Value
    override this.Equals(o: obj) =
        match o with
        | :? TaskId as t -> t.Value = this.Value
        | _ -> false
    interface System.IEquatable<TaskId> with
        member this.Equals(t: TaskId) = t.Value = this.Value
    interface System.IComparable<TaskId> with
        member this.CompareTo(t: TaskId) = compare this.Value t.Value
    interface System.IComparable with
        member this.CompareTo(o: obj) = compare this.Value (o :?> TaskId).Value

/// An attempt's number within one task: 0 for the first try, +1 for each retry (Parsl's `try_id`).
[<Struct>]
type TryId =
    /// The try number.
    val Value: int
    /// Wraps a try number.
    new(value) = { Value = value }
    override this.ToString() = string this.Value
