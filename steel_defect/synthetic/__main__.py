from steel_defect.synthetic.dataset import main

main()
