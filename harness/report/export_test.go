package report

// The external tests (package report_test) read pages with the same
// helpers as the package's own.
var (
	ParsePage  = parse
	FindAll    = findAll
	ByTagClass = byTagClass
	Text       = text
	Texts      = texts
	Attr       = attr
	HasClass   = hasClass
	StepOf     = stepSection
	CellOf     = cell
)
