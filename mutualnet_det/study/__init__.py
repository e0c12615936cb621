"""The accuracy study: the seeded runs of each method, trained and swept into one layout
(`runner`), and the report that compares them (`report`: paired differences, Pareto fronts,
objects by size, distillation)."""
